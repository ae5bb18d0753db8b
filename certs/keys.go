package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// redacted is what every printing of a Key shows.
const redacted = "Key(REDACTED)"

// Key is a private key that cannot leak by accident: every fmt verb, slog and
// JSON show "REDACTED". Its PEM form comes only from PEM, which the code that
// persists or hands over a key calls on purpose.
type Key struct {
	signer crypto.Signer
}

// GenerateKey makes an ECDSA P-256 key, the only kind Fjord creates.
func GenerateKey() (*Key, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating ECDSA P-256 key: %w", err)
	}
	return &Key{signer: k}, nil
}

// ParseKey reads a PKCS #8 "PRIVATE KEY" PEM block.
func ParseKey(data []byte) (*Key, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("private key: want a PEM block of type PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		// The parser's message never includes key bytes.
		return nil, fmt.Errorf("private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key: %T cannot sign", k)
	}
	return &Key{signer: s}, nil
}

// Signer is the key for crypto APIs.
func (k Key) Signer() crypto.Signer { return k.signer }

// Public is the public half.
func (k Key) Public() crypto.PublicKey { return k.signer.Public() }

// Matches reports whether cert carries k's public key: whether cert was
// issued for this key.
func (k Key) Matches(cert *x509.Certificate) bool {
	pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}

// PEM is the key as a PKCS #8 "PRIVATE KEY" block: the only way to get the
// key's bytes.
func (k Key) PEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.signer)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// String, GoString, Format, LogValue and MarshalJSON redact the key.
func (Key) String() string   { return redacted }
func (Key) GoString() string { return redacted }

// Format covers every verb, including %#v and %x, which would otherwise
// print the struct's fields.
func (Key) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

// LogValue redacts the key in slog output.
func (Key) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON redacts the key, so no debug or status JSON can carry it.
func (Key) MarshalJSON() ([]byte, error) { return []byte(`"REDACTED"`), nil }

// MarshalText redacts the key for encoders that use text (YAML, flags).
func (Key) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }
