// Package store keeps the control plane's durable state in one bbolt file,
// DATA/fjord.db: the last accepted configuration (so that a restart serves it
// at once, even when the config source is broken or slow) and, later, the CA
// and tokens. Values are JSON, so the file stays readable with bbolt tools.
package store
