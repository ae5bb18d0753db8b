package certs

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultTrustDomain is the trust domain when none is configured.
const DefaultTrustDomain = "cluster.local"

// scheme prefixes every SPIFFE ID.
const scheme = "spiffe://"

// ErrInvalidIdentity is wrapped by every parse or validation failure, so
// callers can tell a caller's mistake from a system fault.
var ErrInvalidIdentity = errors.New("invalid identity")

// Identity is a workload's SPIFFE ID,
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. It is the only
// name a certificate carries and the only thing authenticated xDS and the
// certificate API compare, so it is parsed and validated here and nowhere
// else.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// ServiceAccount is what a token speaks for: a namespace and a service
// account, without the trust domain (which is the control plane's).
type ServiceAccount struct {
	Namespace string
	Name      string
}

// String is "NS/SA", the form of the --identity flags.
func (sa ServiceAccount) String() string { return sa.Namespace + "/" + sa.Name }

// Validate checks both names with the Kubernetes rules: the namespace a
// DNS-1123 label, the service account a DNS-1123 subdomain.
func (sa ServiceAccount) Validate() error {
	if err := dnsLabel(sa.Namespace); err != nil {
		return fmt.Errorf("%w: namespace %q: %w", ErrInvalidIdentity, sa.Namespace, err)
	}
	if err := dnsSubdomain(sa.Name); err != nil {
		return fmt.Errorf("%w: service account %q: %w", ErrInvalidIdentity, sa.Name, err)
	}
	return nil
}

// ParseServiceAccount parses "NS/SA".
func ParseServiceAccount(s string) (ServiceAccount, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return ServiceAccount{}, fmt.Errorf("%w: %q: want NAMESPACE/SERVICE-ACCOUNT", ErrInvalidIdentity, s)
	}
	sa := ServiceAccount{Namespace: ns, Name: name}
	if err := sa.Validate(); err != nil {
		return ServiceAccount{}, err
	}
	return sa, nil
}

// NewIdentity is the identity of sa in trustDomain, validated.
func NewIdentity(trustDomain string, sa ServiceAccount) (Identity, error) {
	id := Identity{TrustDomain: trustDomain, Namespace: sa.Namespace, ServiceAccount: sa.Name}
	return id, id.Validate()
}

// Account drops the trust domain.
func (id Identity) Account() ServiceAccount {
	return ServiceAccount{Namespace: id.Namespace, Name: id.ServiceAccount}
}

// String is the SPIFFE ID. Parse(id.String()) == id for every valid id.
func (id Identity) String() string {
	return scheme + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL is the SPIFFE ID as the URI SAN of a certificate.
func (id Identity) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// Validate checks every part.
func (id Identity) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	return id.Account().Validate()
}

// ValidateTrustDomain applies the SPIFFE rules for a trust domain name
// (lowercase letters, digits, '.', '-', '_'; at most 255 bytes), and refuses
// empty labels so that "a..b" and ".a" never name a trust domain.
func ValidateTrustDomain(td string) error {
	if td == "" || len(td) > 255 {
		return fmt.Errorf("%w: trust domain %q: want 1 to 255 characters", ErrInvalidIdentity, td)
	}
	for _, label := range strings.Split(td, ".") {
		if label == "" {
			return fmt.Errorf("%w: trust domain %q: empty label", ErrInvalidIdentity, td)
		}
	}
	for _, c := range []byte(td) {
		if !(isLowerAlnum(c) || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: trust domain %q: character %q: want a-z, 0-9, '.', '-' or '_'", ErrInvalidIdentity, td, c)
		}
	}
	return nil
}

// Parse parses a SPIFFE ID of Fjord's form. It is strict rather than
// lenient: no percent-encoding, query, fragment, port, user info, trailing
// slash or extra path segment, so that exactly one string names each
// identity and comparing strings is comparing identities.
func Parse(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q: want %s<trust-domain>/ns/<namespace>/sa/<service-account>", ErrInvalidIdentity, s, scheme)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q: no path", ErrInvalidIdentity, s)
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return Identity{}, fmt.Errorf("%w: %q: path must be /ns/<namespace>/sa/<service-account>", ErrInvalidIdentity, s)
	}
	id := Identity{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("%q: %w", s, err)
	}
	return id, nil
}

// FromURL is Parse for a certificate's URI SAN. Go's URL parser has already
// decoded it, so the check is that it re-encodes to exactly the canonical
// SPIFFE ID: an encoded or otherwise non-canonical form is refused.
func FromURL(u *url.URL) (Identity, error) {
	if u == nil {
		return Identity{}, fmt.Errorf("%w: no URI", ErrInvalidIdentity)
	}
	s := u.String()
	id, err := Parse(s)
	if err != nil {
		return Identity{}, err
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" || u.RawPath != "" || u.ForceQuery || u.OmitHost {
		return Identity{}, fmt.Errorf("%w: %q: not a canonical SPIFFE ID", ErrInvalidIdentity, s)
	}
	return id, nil
}

// dnsLabel is Kubernetes' DNS-1123 label rule (namespaces).
func dnsLabel(s string) error {
	if len(s) > 63 {
		return errors.New("want at most 63 characters")
	}
	return labelChars(s)
}

// dnsSubdomain is Kubernetes' DNS-1123 subdomain rule (service accounts):
// dot-separated labels, at most 253 characters in all.
func dnsSubdomain(s string) error {
	if len(s) > 253 {
		return errors.New("want at most 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if err := labelChars(label); err != nil {
			return fmt.Errorf("label %q: %w", label, err)
		}
	}
	return nil
}

// labelChars: lowercase alphanumerics and inner dashes, not empty.
func labelChars(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	for i := range len(s) {
		c := s[i]
		switch {
		case isLowerAlnum(c):
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return fmt.Errorf("character %q at %d: want a-z, 0-9 or an inner '-'", c, i)
		}
	}
	return nil
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
