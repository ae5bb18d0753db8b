package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultMeshNamespace is the control plane's namespace when Options leaves
// it empty; policies there without targetRefs are the mesh-wide defaults.
const DefaultMeshNamespace = "fjord-system"

// Options are the inputs of Resolve that do not come from the snapshot.
type Options struct {
	// MeshNamespace is the control plane's own namespace. Default
	// DefaultMeshNamespace.
	MeshNamespace string
	// LastAccepted is the previous resolution's Mesh.Accepted (persisted by
	// the store). When a policy's current spec is invalid, its entry here
	// keeps being served, so a bad edit never changes what proxies get.
	LastAccepted []model.Policy
	// DefaultExportTo is the export-to list (model.ParseExportTo's form)
	// of every Service without one of its own; nil means every namespace.
	DefaultExportTo []string
}

// policyState is one policy of the snapshot on its way through resolution.
type policyState struct {
	key     model.Key
	current *model.Policy
	// used is the spec that takes part in resolution: current when it is
	// valid, else the last accepted one, else nil.
	used *model.Policy
	// invalid is the validation failure of current, "" when it is valid.
	invalid string
	// notEnforced is the part of the Accepted message naming the fields
	// some proxy kind ignores; computed on first use.
	notEnforced *string
}

// target is one place a policy attaches to: a port of a Service (by name),
// a whole Service, or a namespace (as its default). Policies at the same
// target compete; the oldest wins.
type target struct {
	level Level
	ns    string
	svc   string
	port  string
}

// Resolve decides, for every Service port in the snapshot, its endpoints and
// its one effective policy, and computes every policy's status. It is pure
// and deterministic: the same snapshot and options give an equal Mesh
// whatever the order of their slices, and the input is not modified. Keys
// are unique within each slice of a snapshot and within LastAccepted.
//
// Precedence, most specific first: a policy targeting the port (sectionName),
// one targeting the Service, the namespace default (no targetRefs, same
// namespace), the mesh default (no targetRefs, in the mesh namespace).
// Fields are merged one by one, so a more specific policy overrides only what
// it sets. A default in the mesh namespace is the namespace default of the
// Services there and the mesh default of every other namespace. Policies at
// the same target compete as a whole: the oldest creationTimestamp wins, then
// the first by namespace/name, and the others are Conflicted there.
//
// Mesh routes (HTTPRoute, GRPCRoute with a Service parentRef) attach to the
// Service ports they select; each port gets its routes in Gateway API match
// precedence order, with route-level timeouts and retry laid over the
// port's effective policy, followed by the Service's own default route.
func Resolve(in *model.Snapshot, opts Options) *Mesh {
	meshNS := cmp.Or(opts.MeshNamespace, DefaultMeshNamespace)
	r := &resolver{
		meshNS:   meshNS,
		exportTo: opts.DefaultExportTo,
		services: map[model.Key]*model.Service{},
		winners:  map[target]*policyState{},
		lostTo:   map[lossKey]*policyState{},
	}
	for i := range in.Services {
		s := &in.Services[i]
		r.services[s.Key] = s
	}
	states := r.validate(in.Policies, opts.LastAccepted)
	r.compete(states)

	m := &Mesh{Services: r.resolveServices(in)}
	m.Exports = r.exports
	slices.SortFunc(m.Exports, func(a, b Export) int { return compareKeys(a.Service, b.Service) })
	r.resolveRoutes(in, m)
	for _, st := range states {
		if st.used != nil {
			p := *st.used
			p.Spec = *p.Spec.DeepCopy()
			m.Accepted = append(m.Accepted, p)
		}
		m.Statuses = append(m.Statuses, r.status(st))
	}
	return m
}

// lossKey is a policy at a target where another one won.
type lossKey struct {
	policy model.Key
	at     target
}

// resolver holds what one Resolve call has learnt about the snapshot.
type resolver struct {
	meshNS string
	// exportTo is Options.DefaultExportTo; exports collects Mesh.Exports.
	exportTo []string
	exports  []Export
	services map[model.Key]*model.Service
	winners  map[target]*policyState
	lostTo   map[lossKey]*policyState
}

// validate checks every policy and picks the spec each one takes part with.
// The result is sorted by key.
func (r *resolver) validate(policies, lastAccepted []model.Policy) []*policyState {
	last := map[model.Key]*model.Policy{}
	for i := range lastAccepted {
		last[lastAccepted[i].Key] = &lastAccepted[i]
	}
	states := make([]*policyState, 0, len(policies))
	for i := range policies {
		p := &policies[i]
		st := &policyState{key: p.Key, current: p, used: p}
		if err := Validate(&p.Spec); err != nil {
			st.invalid = strings.ReplaceAll(err.Error(), "\n", "; ")
			st.used = nil
			// The last accepted spec is checked again: rules may have
			// become stricter since it was accepted.
			if lp, ok := last[p.Key]; ok && Validate(&lp.Spec) == nil {
				st.used = lp
			}
		}
		states = append(states, st)
	}
	slices.SortFunc(states, func(a, b *policyState) int { return compareKeys(a.key, b.key) })
	return states
}

// attachment is one target of a policy as written, with the ancestor its
// status is reported on.
type attachment struct {
	ancestor fjordv1a1.AncestorRef
	at       target
	// notFound explains why the target does not exist, "" when it does.
	notFound string
}

// attachments returns the targets of a policy, one per distinct targetRef,
// in the order written; a policy without targetRefs attaches to its
// namespace.
func (r *resolver) attachments(p *model.Policy) []attachment {
	if len(p.Spec.TargetRefs) == 0 {
		return []attachment{{
			ancestor: fjordv1a1.AncestorRef{Kind: "Namespace", Name: p.Namespace},
			at:       target{level: LevelNamespace, ns: p.Namespace},
		}}
	}
	type refID struct {
		group, kind, name, section string
		port                       bool
	}
	var out []attachment
	seen := map[refID]bool{}
	for _, ref := range p.Spec.TargetRefs {
		id := refID{group: ref.Group, kind: ref.Kind, name: ref.Name, port: ref.SectionName != nil}
		if id.port {
			id.section = *ref.SectionName
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		a := attachment{
			ancestor: fjordv1a1.AncestorRef{Group: ref.Group, Kind: ref.Kind, Namespace: p.Namespace, Name: ref.Name},
			at:       target{level: LevelService, ns: p.Namespace, svc: ref.Name},
		}
		section := id.section
		if id.port {
			a.ancestor.SectionName = &section
			a.at.level, a.at.port = LevelPort, section
		}
		svc, ok := r.services[model.Key{Namespace: p.Namespace, Name: ref.Name}]
		switch {
		case !ok:
			a.notFound = fmt.Sprintf("Service %s/%s not found", p.Namespace, ref.Name)
		case ref.SectionName != nil && !slices.ContainsFunc(svc.Ports, func(sp model.ServicePort) bool { return sp.Name == section }):
			a.notFound = fmt.Sprintf("Service %s/%s has no port named %q", p.Namespace, ref.Name, section)
		}
		out = append(out, a)
	}
	return out
}

// compete groups the policies in use by target and picks each target's
// winner: the oldest creationTimestamp, then the first by namespace/name.
func (r *resolver) compete(states []*policyState) {
	groups := map[target][]*policyState{}
	var order []target
	for _, st := range states {
		if st.used == nil {
			continue
		}
		for _, a := range r.attachments(st.used) {
			if a.notFound != "" {
				continue
			}
			if groups[a.at] == nil {
				order = append(order, a.at)
			}
			groups[a.at] = append(groups[a.at], st)
		}
	}
	for _, at := range order {
		g := groups[at]
		slices.SortFunc(g, func(a, b *policyState) int {
			if c := a.used.CreationTimestamp.Compare(b.used.CreationTimestamp); c != 0 {
				return c
			}
			return compareKeys(a.key, b.key)
		})
		r.winners[at] = g[0]
		for _, loser := range g[1:] {
			r.lostTo[lossKey{loser.key, at}] = g[0]
		}
	}
}

// resolveServices resolves every Service of the snapshot, sorted by key, with its
// ports sorted by number.
func (r *resolver) resolveServices(in *model.Snapshot) []Service {
	eps := NewEndpointIndex(in.EndpointSlices)
	// Most ports share their stack of winning policies (often just the
	// defaults), so each distinct stack is merged once; every port still
	// gets its own copy.
	type merged struct {
		spec    fjordv1a1.ResiliencePolicySpec
		sources []FieldSource
	}
	cache := map[string]*merged{}
	out := make([]Service, 0, len(in.Services))
	for i := range in.Services {
		s := &in.Services[i]
		svc := Service{Key: s.Key, Ports: make([]Port, 0, len(s.Ports)), ServiceAccounts: slices.Clone(s.ServiceAccounts)}
		if to := exportTo(s, r.exportTo); to != nil {
			r.exports = append(r.exports, Export{Service: s.Key, To: to})
		}
		for _, sp := range s.Ports {
			layers := r.layers(s.Key, sp.Name)
			id := stackID(layers)
			m := cache[id]
			if m == nil {
				m = &merged{}
				m.spec, m.sources = merge(layers)
				cache[id] = m
			}
			svc.Ports = append(svc.Ports, Port{
				Name:        sp.Name,
				Port:        sp.Port,
				AppProtocol: sp.AppProtocol,
				Endpoints:   eps.Endpoints(s.Key, sp.Name),
				Policy:      *m.spec.DeepCopy(),
				Sources:     slices.Clone(m.sources),
			})
		}
		slices.SortFunc(svc.Ports, func(a, b Port) int {
			return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(a.Name, b.Name))
		})
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b Service) int { return compareKeys(a.Key, b.Key) })
	return out
}

// stackID names a stack of layers for memoizing merges.
func stackID(layers []layer) string {
	var b strings.Builder
	for _, l := range layers {
		fmt.Fprintf(&b, "%d/%s/%s;", l.level, l.policy.key.Namespace, l.policy.key.Name)
	}
	return b.String()
}

// layers returns the winning policies that apply to one port, least
// specific first.
func (r *resolver) layers(svc model.Key, port string) []layer {
	var out []layer
	add := func(at target, level Level) {
		if w := r.winners[at]; w != nil {
			out = append(out, layer{policy: w, level: level})
		}
	}
	if svc.Namespace != r.meshNS {
		add(target{level: LevelNamespace, ns: r.meshNS}, LevelMesh)
	}
	add(target{level: LevelNamespace, ns: svc.Namespace}, LevelNamespace)
	add(target{level: LevelService, ns: svc.Namespace, svc: svc.Name}, LevelService)
	if port != "" {
		add(target{level: LevelPort, ns: svc.Namespace, svc: svc.Name, port: port}, LevelPort)
	}
	return out
}

// status computes one policy's status: one ancestor per target as written
// in its current spec.
func (r *resolver) status(st *policyState) Status {
	out := Status{Key: st.key, Generation: st.current.Generation}
	attachments := r.attachments(st.current)
	// The status schema holds at most as many ancestors as a valid policy
	// has targets; only an invalid policy (standalone mode has no schema to
	// stop it) can have more, and its first ancestors already say why.
	if len(attachments) > maxTargetRefs {
		attachments = attachments[:maxTargetRefs]
	}
	for _, a := range attachments {
		status, reason, msg := metav1.ConditionTrue, fjordv1a1.ReasonAccepted, ""
		switch {
		case st.invalid != "":
			status, reason, msg = metav1.ConditionFalse, fjordv1a1.ReasonInvalid, st.invalid+"; "+servedNote(st)
		case a.notFound != "":
			status, reason, msg = metav1.ConditionFalse, fjordv1a1.ReasonTargetNotFound, a.notFound+"."
		case r.lostTo[lossKey{st.key, a.at}] != nil:
			status, reason = metav1.ConditionFalse, fjordv1a1.ReasonConflicted
			msg = r.conflictMessage(st, r.lostTo[lossKey{st.key, a.at}], a.at)
		default:
			msg = r.acceptedMessage(st, a.at)
		}
		out.Ancestors = append(out.Ancestors, fjordv1a1.PolicyAncestorStatus{
			AncestorRef:    a.ancestor,
			ControllerName: fjordv1a1.ControllerName,
			Conditions: []metav1.Condition{{
				Type:               fjordv1a1.ConditionAccepted,
				Status:             status,
				Reason:             reason,
				Message:            truncate(msg, maxMessageLength),
				ObservedGeneration: st.current.Generation,
			}},
		})
	}
	return out
}

// maxMessageLength is the longest condition message the API server
// accepts (metav1.Condition).
const maxMessageLength = 32768

// truncate shortens s to at most n bytes without splitting a UTF-8
// character, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = " ..."
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

func servedNote(st *policyState) string {
	if st.used == nil {
		return "the policy is not applied."
	}
	return fmt.Sprintf("generation %d, the last accepted, is still served.", st.used.Generation)
}

// describe names a target as users read it in status messages.
func (r *resolver) describe(at target) string {
	switch {
	case at.level == LevelPort:
		return fmt.Sprintf("port %q of Service %s/%s", at.port, at.ns, at.svc)
	case at.level == LevelService:
		return fmt.Sprintf("Service %s/%s", at.ns, at.svc)
	case at.ns == r.meshNS:
		return fmt.Sprintf("the mesh-wide default and the default for namespace %s", at.ns)
	}
	return "the default for namespace " + at.ns
}

func (r *resolver) conflictMessage(loser, winner *policyState, at target) string {
	what := "for " + r.describe(at)
	if at.level == LevelNamespace {
		what = "as " + r.describe(at)
	}
	why := fmt.Sprintf("it is older (created %s)", winner.used.CreationTimestamp.UTC().Format(time.RFC3339))
	if winner.used.CreationTimestamp.Equal(loser.used.CreationTimestamp) {
		why = "it was created at the same time and comes first by namespace/name"
	}
	return fmt.Sprintf("%s takes precedence %s: %s. At one level only one policy applies, as a whole.", winner.key, what, why)
}

func (r *resolver) acceptedMessage(st *policyState, at target) string {
	msg := "Accepted for " + r.describe(at) + "."
	if at.level == LevelNamespace {
		msg = "Accepted as " + r.describe(at) + "."
	}
	if st.notEnforced == nil {
		var b strings.Builder
		for _, kind := range node.Kinds {
			if u := unenforcedBy(kind, &st.used.Spec); len(u) > 0 {
				fmt.Fprintf(&b, " Not enforced by %s: %s.", kindName(kind), strings.Join(u, ", "))
			}
		}
		s := b.String()
		st.notEnforced = &s
	}
	return msg + *st.notEnforced
}

func kindName(k node.Kind) string {
	if k == node.GRPC {
		return "proxyless gRPC"
	}
	return string(k)
}

func compareKeys(a, b model.Key) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// exportTo is the list of s's Export: its own, or the default; nil when
// every namespace may see s.
func exportTo(s *model.Service, def []string) []string {
	list := s.ExportTo
	if list == nil {
		if def == nil {
			return nil
		}
		list = model.NormaliseExportTo(def, s.Namespace)
	}
	if slices.Contains(list, model.ExportAll) {
		return nil
	}
	return slices.Clone(list)
}
