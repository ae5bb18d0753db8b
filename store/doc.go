// Package store keeps the control plane's durable state in one bbolt file,
// DATA/fjord.db: the last accepted configuration and, in standalone mode,
// each config file's last good content (so that a restart serves them at
// once, even when the config source is broken or slow) and, later, the CA
// and tokens. The config is kept one value per object and per file, so that
// saving it after a change writes only what changed; objects are JSON, so
// the file stays readable with bbolt tools.
package store
