package model

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// The special entries of an export-to list (the fjord.dev/export-to
// annotation and fjord-cp's --default-export-to), as in Istio's exportTo:
// ExportAll makes a Service visible to every namespace, ExportOwn to its
// own namespace only.
const (
	ExportAll = "*"
	ExportOwn = "."
)

// ParseExportTo reads a comma-separated export-to list: ExportAll,
// ExportOwn or namespace names (DNS-1123 labels), spaces around entries
// ignored. The entries come back as written, without duplicates; ExportOwn
// stays as it is, since only a Service knows which namespace it means (see
// NormaliseExportTo). An empty list is an error: a Service visible to no
// one, not even its own namespace, is never what was meant.
func ParseExportTo(value string) ([]string, error) {
	var out []string
	for i, e := range strings.Split(value, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e == "" && strings.TrimSpace(value) == "":
			return nil, fmt.Errorf(`no entry: want "*", "." or namespace names, comma-separated`)
		case e == "":
			return nil, fmt.Errorf("entry %d is empty", i+1)
		case e == ExportAll || e == ExportOwn:
		default:
			if errs := validation.IsDNS1123Label(e); len(errs) > 0 {
				return nil, fmt.Errorf(`entry %q is neither "*", "." nor a namespace name: %s`, e, strings.Join(errs, "; "))
			}
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// NormaliseExportTo puts a parsed export-to list of a Service in namespace
// in the form the model carries: ExportOwn replaced by the namespace,
// sorted, without duplicates, and just ExportAll when it contains it (every
// namespace includes all the others). Equal visibility then means equal
// lists.
func NormaliseExportTo(entries []string, namespace string) []string {
	if slices.Contains(entries, ExportAll) {
		return []string{ExportAll}
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		if e == ExportOwn {
			e = namespace
		}
		out = append(out, e)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
