package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"testing"
)

// TestKeyRedaction: no printing, logging or JSON encoding of a key, or of
// something holding one, shows its bytes.
func TestKeyRedaction(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := k.PEM()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.Signer().(*ecdsa.PrivateKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{hex.EncodeToString(raw), new(big.Int).SetBytes(raw).String(), "PRIVATE KEY"}
	holder := struct {
		Name string
		Key  Key
		Ptr  *Key
	}{"x", *k, k}
	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
		outputs = append(outputs, fmt.Sprintf(verb, k), fmt.Sprintf(verb, *k), fmt.Sprintf(verb, holder))
	}
	js, err := json.Marshal(holder)
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(js))
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var b bytes.Buffer
		slog.New(h(&b)).Info("key", "key", k, "value", *k, "holder", holder)
		outputs = append(outputs, b.String())
	}
	for _, out := range outputs {
		if !strings.Contains(out, "REDACTED") {
			t.Errorf("output without REDACTED: %s", out)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("output shows the key: %s", out)
			}
		}
	}
	back, err := ParseKey(pemKey)
	if err != nil || !back.matchesKey(k) {
		t.Fatalf("PEM round trip: %v", err)
	}
}

func (k Key) matchesKey(o *Key) bool {
	pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(o.Public())
}
