// Package policy is the pure middle of the pipeline: Resolve takes a
// model.Snapshot and decides, for every Service port, its endpoints and the
// one effective ResiliencePolicy (attachment, precedence, field-by-field
// merge, validation) and its mesh routes (attachment, match precedence,
// conflicts), and computes every policy's and route's status as data.
// Views groups namespaces by the Services they may see (export-to), and
// gives each group its filtered copy of the resolved mesh. It
// imports no client-go, no clock and no randomness, so the translators
// downstream and the status writer upstream can trust equal inputs to give
// equal output.
package policy
