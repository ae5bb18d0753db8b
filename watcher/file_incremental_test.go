package watcher

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/fsnotify/fsnotify"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fjordmesh/fjord/watcher/model"
)

// driven is a fileScan driven by hand: the test calls note for the events
// it wants seen, then build, so it knows exactly what each build was told.
type driven struct {
	*fileScan
	published []*model.Snapshot
	holds     int
	errs      []error
}

func newDriven(t *testing.T, dir string) *driven {
	t.Helper()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	d := &driven{}
	src := &FileSource{Dir: dir, OnError: func(err error) { d.errs = append(d.errs, err) }}
	d.fileScan = newFileScan(src, slog.New(slog.DiscardHandler), w, func(s *model.Snapshot) {
		d.published = append(d.published, s)
	})
	d.hold = func() { d.holds++ }
	if err := d.watch(d.src.Dir); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *driven) latest() *model.Snapshot {
	if len(d.published) == 0 {
		return nil
	}
	return d.published[len(d.published)-1]
}

// fullScan is what a fresh source publishes from dir.
func fullScan(t *testing.T, dir string) *model.Snapshot {
	t.Helper()
	d := newDriven(t, dir)
	defer d.watcher.Close() // now, not at the end of the test: inotify instances are few
	d.build(Burst{})
	if d.latest() == nil {
		t.Fatalf("full scan of %s published nothing", dir)
	}
	return d.latest()
}

func diffSnapshots(want, got *model.Snapshot) string {
	return cmp.Diff(want, got, cmpopts.EquateEmpty(), cmpopts.IgnoreFields(model.Policy{}, "CreationTimestamp"))
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func rename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func TestFileScanNote(t *testing.T) {
	dir := t.TempDir()
	mkdir(t, filepath.Join(dir, "sub"))
	mkdir(t, filepath.Join(dir, "gone"))
	d := newDriven(t, dir)
	d.build(Burst{}) // watches sub and gone
	if err := os.Remove(filepath.Join(dir, "gone")); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		path string
		want change
	}{
		"config file":                   {"a.yaml", changeFile},
		"config file in a subdirectory": {"sub/b.yml", changeFile},
		"json":                          {"c.json", changeFile},
		"editor's temporary file":       {".a.yaml.tmp", changeNone},
		"hidden directory's file":       {".git/x.yaml", changeNone},
		"other file":                    {"README.md", changeNone},
		"new directory":                 {"sub", changeTree},
		"removed watched directory":     {"gone", changeTree},
		"removed other file":            {"notes.txt", changeNone},
		"ConfigMap data swap":           {"..data", changeTree},
		"the directory itself":          {".", changeTree},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := d.note(filepath.Join(dir, tc.path)); got != tc.want {
				t.Errorf("note(%s) = %d, want %d", tc.path, got, tc.want)
			}
		})
	}
}

// TestFileScanIncremental drives builds by hand: each build re-reads only
// the files it was told about, unless a directory changed, and ends in the
// state a full scan of the tree would find.
func TestFileScanIncremental(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "sub", "b.yaml")
	write(t, a, echoService+"---\n"+echoSlice("127.0.0.1"))
	write(t, b, breakerPolicy)
	d := newDriven(t, dir)
	d.build(Burst{})
	// step notes the events, builds as the coalescer would for them, and
	// checks the result against a full scan.
	step := func(t *testing.T, paths ...string) {
		t.Helper()
		burst := Burst{Endpoints: true}
		for _, p := range paths {
			if d.note(p) == changeTree {
				burst.Endpoints = false
			}
		}
		holds := d.holds
		d.build(burst)
		if d.holds > holds {
			d.build(Burst{})
		}
		if diff := diffSnapshots(fullScan(t, dir), d.latest()); diff != "" {
			t.Fatalf("incremental state differs from a full scan (-full +incremental):\n%s", diff)
		}
	}

	t.Run("only the files with events are read", func(t *testing.T) {
		write(t, a, echoService+"---\n"+echoSlice("127.0.0.2"))
		write(t, b, strings.Replace(breakerPolicy, "1s", "2s", 1))
		n := len(d.published)
		d.note(a)
		d.build(Burst{Endpoints: true})
		got := d.latest()
		if len(d.published) != n+1 || !cmp.Equal(addresses(got), []string{"127.0.0.2"}) {
			t.Fatalf("endpoint change not published after the endpoint hold-off: %+v", got)
		}
		if *got.Policies[0].Spec.OutlierDetection.Interval != "1s" {
			t.Fatal("a file without an event was read: the build rescanned the tree")
		}
		// The policy change is more than endpoints: held, not published.
		d.note(b)
		d.build(Burst{Endpoints: true})
		if d.holds != 1 || len(d.published) != n+1 {
			t.Fatalf("a policy change built as an endpoint burst: %d holds, %d publishes, want 1 and %d", d.holds, len(d.published), n+1)
		}
		d.build(Burst{})
		if got := d.latest(); len(d.published) != n+2 || *got.Policies[0].Spec.OutlierDetection.Interval != "2s" {
			t.Fatalf("held policy change not published by the next config build: %+v", got.Policies)
		}
	})

	t.Run("create", func(t *testing.T) {
		c := filepath.Join(dir, "sub", "c.yaml")
		write(t, c, strings.Replace(echoService, "name: echo", "name: other", 1))
		step(t, c)
		if len(d.latest().Services) != 2 {
			t.Fatalf("new file not read: %+v", d.latest().Services)
		}
	})

	t.Run("an endpoints-only file is created and removed", func(t *testing.T) {
		e := filepath.Join(dir, "sub", "eps.yaml")
		write(t, e, strings.Replace(echoSlice("127.0.0.9"), "echo-1", "echo-2", 1))
		holds := d.holds
		step(t, e)
		if !slices.Contains(addresses(d.latest()), "127.0.0.9") || d.holds != holds {
			t.Fatalf("new EndpointSlice file not published as an endpoint change: %d holds, %+v", d.holds-holds, d.latest())
		}
		if err := os.Remove(e); err != nil {
			t.Fatal(err)
		}
		step(t, e)
		if slices.Contains(addresses(d.latest()), "127.0.0.9") || d.holds != holds {
			t.Fatalf("removed EndpointSlice file not published as an endpoint change: %d holds, %+v", d.holds-holds, d.latest())
		}
	})

	t.Run("an endpoint change shares the rest and still finds duplicates", func(t *testing.T) {
		prev := d.latest()
		write(t, a, echoService+"---\n"+echoSlice("127.0.0.3"))
		step(t, a)
		got := d.latest()
		if !cmp.Equal(addresses(got), []string{"127.0.0.3"}) {
			t.Fatalf("endpoint change not published: %+v", got.EndpointSlices)
		}
		if unsafe.SliceData(got.Services) != unsafe.SliceData(prev.Services) ||
			unsafe.SliceData(got.Policies) != unsafe.SliceData(prev.Policies) {
			t.Error("an endpoint change assembled Services and Policies again instead of sharing them")
		}
		// A second file defining the same EndpointSlice is an endpoint
		// change too: reported, and the first path's slice is kept.
		dup := filepath.Join(dir, "sub", "dup.yaml")
		write(t, dup, echoSlice("127.0.0.4"))
		errs := len(d.errs)
		step(t, dup)
		if !cmp.Equal(addresses(d.latest()), []string{"127.0.0.3"}) {
			t.Fatalf("the duplicate EndpointSlice replaced the first one: %+v", d.latest().EndpointSlices)
		}
		if len(d.errs) != errs+1 || !strings.Contains(d.errs[errs].Error(), "defined in both") {
			t.Fatalf("duplicate not reported: %v", d.errs[errs:])
		}
		if err := os.Remove(dup); err != nil {
			t.Fatal(err)
		}
		step(t, dup)
	})

	t.Run("rename a file", func(t *testing.T) {
		from, to := filepath.Join(dir, "sub", "c.yaml"), filepath.Join(dir, "c2.yaml")
		rename(t, from, to)
		step(t, from, to)
		rename(t, to, filepath.Join(dir, "c.txt")) // out of the config files
		step(t, to, filepath.Join(dir, "c.txt"))
		if len(d.latest().Services) != 1 {
			t.Fatalf("a file renamed to a name the source does not read still counts: %+v", d.latest().Services)
		}
	})

	t.Run("nested directories", func(t *testing.T) {
		p := filepath.Join(dir, "team", "x", "y", "p.yaml")
		write(t, p, strings.Replace(breakerPolicy, "name: breaker", "name: nested", 1))
		step(t, filepath.Join(dir, "team"))
		if !hasPolicy(d.latest(), "nested") {
			t.Fatal("policy in a new nested directory not read")
		}
		// The new directories are watched, so their files' events come.
		for _, sub := range []string{"team", "team/x", "team/x/y"} {
			if !d.watched[filepath.Join(dir, sub)] {
				t.Errorf("%s not watched", sub)
			}
		}
		q := filepath.Join(dir, "team", "x", "y", "q.yaml")
		write(t, q, strings.Replace(breakerPolicy, "name: breaker", "name: nested2", 1))
		step(t, q)
		if !hasPolicy(d.latest(), "nested2") {
			t.Fatal("second file in the nested directory not read")
		}
	})

	t.Run("rename a directory", func(t *testing.T) {
		rename(t, filepath.Join(dir, "team", "x"), filepath.Join(dir, "x2"))
		step(t, filepath.Join(dir, "team", "x"), filepath.Join(dir, "x2"))
		if d.watched[filepath.Join(dir, "team", "x")] || !d.watched[filepath.Join(dir, "x2", "y")] {
			t.Fatalf("watches do not follow the renamed directory: %v", d.watched)
		}
		r := filepath.Join(dir, "x2", "y", "r.yaml")
		write(t, r, strings.Replace(breakerPolicy, "name: breaker", "name: moved", 1))
		step(t, r)
		if !hasPolicy(d.latest(), "moved") {
			t.Fatal("file in the renamed directory not read")
		}
	})

	t.Run("remove a directory", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(dir, "x2")); err != nil {
			t.Fatal(err)
		}
		step(t, filepath.Join(dir, "x2"))
		if hasPolicy(d.latest(), "nested") || hasPolicy(d.latest(), "moved") {
			t.Fatalf("policies of a removed directory remain: %+v", d.latest().Policies)
		}
	})

	t.Run("a broken edit keeps the last good content", func(t *testing.T) {
		errs := len(d.errs)
		write(t, b, breakerPolicy+"  bogus: true\n")
		d.note(b)
		d.build(Burst{Endpoints: true})
		if len(d.errs) != errs+1 || !strings.Contains(d.errs[errs].Error(), `unknown field "spec.bogus"`) ||
			!strings.Contains(d.errs[errs].Error(), b) {
			t.Fatalf("errors reported: %v", d.errs[errs:])
		}
		if !hasPolicy(d.latest(), "breaker") {
			t.Fatal("the broken file's policy vanished")
		}
		write(t, b, strings.Replace(breakerPolicy, "1s", "3s", 1))
		step(t, b)
	})
}

// TestFileSourceMatchesFullScan applies random file and directory
// operations under a running source, with real file system events, and
// checks after each that it converges to what a full scan of the tree
// finds.
func TestFileSourceMatchesFullScan(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			dir := t.TempDir()
			r := runFileSource(t, &FileSource{Dir: dir, HoldOff: 5 * time.Millisecond, EndpointHoldOff: time.Millisecond, MaxDelay: 20 * time.Millisecond})
			r.waitFor(t, "initial snapshot", func(*model.Snapshot) bool { return true })
			ops := newRandomTree(t, dir, seed)
			for i := range 40 {
				what := ops.step()
				want := fullScan(t, dir)
				deadline := time.Now().Add(30 * time.Second)
				for {
					got, _ := r.snapshot()
					diff := diffSnapshots(want, got)
					if diff == "" {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("after op %d (%s) the source did not converge to a full scan (-full +source):\n%s", i, what, diff)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
}

// randomTree makes random changes to a config tree. Every file defines
// objects named after the file's own serial number, so no two files
// define the same object whatever is renamed where.
type randomTree struct {
	t      *testing.T
	dir    string
	rng    *rand.Rand
	serial int
}

func newRandomTree(t *testing.T, dir string, seed uint64) *randomTree {
	return &randomTree{t: t, dir: dir, rng: rand.New(rand.NewPCG(seed, 0))}
}

// files and dirs list the tree's visible config files and directories.
func (r *randomTree) files() []string {
	var out []string
	filepath.WalkDir(r.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && configFile(p) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func (r *randomTree) dirs() []string {
	var out []string
	filepath.WalkDir(r.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func (r *randomTree) content() string {
	r.serial++
	name := fmt.Sprintf("s%d", r.serial)
	var b strings.Builder
	if r.rng.IntN(2) == 0 {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: demo}\nspec:\n  ports:\n  - {name: grpc, port: %d}\n---\n",
			name, 1000+r.rng.IntN(10))
	}
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: %s-1, namespace: demo, labels: {kubernetes.io/service-name: %s}}\naddressType: IPv4\nports: [{name: grpc, port: 9000}]\nendpoints:\n- addresses: [127.0.0.%d]\n",
		name, name, 1+r.rng.IntN(200))
	return b.String()
}

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

// step makes one random change and says what it was.
func (r *randomTree) step() string {
	t, files, dirs := r.t, r.files(), r.dirs()
	switch op := r.rng.IntN(8); {
	case op == 0 || len(files) == 0:
		p := filepath.Join(pick(r.rng, dirs), fmt.Sprintf("f%d.yaml", r.rng.IntN(1000)))
		write(t, p, r.content())
		return "create " + p
	case op == 1:
		// Written in place: Write events, possibly a half-written read.
		p := pick(r.rng, files)
		if err := os.WriteFile(p, []byte(r.content()), 0o644); err != nil {
			t.Fatal(err)
		}
		return "rewrite in place " + p
	case op == 2:
		p := pick(r.rng, files)
		write(t, p, r.content())
		return "replace " + p
	case op == 3:
		p := pick(r.rng, files)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		return "remove " + p
	case op == 4:
		p := pick(r.rng, files)
		to := filepath.Join(pick(r.rng, dirs), fmt.Sprintf("m%d.yaml", r.rng.IntN(1000)))
		rename(t, p, to)
		return "rename " + p + " to " + to
	case op == 5:
		p := filepath.Join(pick(r.rng, dirs), fmt.Sprintf("d%d", r.rng.IntN(100)), fmt.Sprintf("e%d", r.rng.IntN(100)), "n.yaml")
		write(t, p, r.content())
		return "create nested " + p
	case op == 6 && len(dirs) > 1:
		d := pick(r.rng, dirs[1:])
		to := filepath.Join(r.dir, fmt.Sprintf("r%d", r.rng.IntN(1000)))
		if _, err := os.Stat(to); err == nil || to == d {
			return "nothing"
		}
		rename(t, d, to)
		return "rename dir " + d + " to " + to
	case op == 7 && len(dirs) > 1:
		d := pick(r.rng, dirs[1:])
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
		return "remove dir " + d
	}
	return "nothing"
}

// TestFileSourceEndpointFlipTakesTheEndpointHoldOff runs the source with an
// hour-long normal hold-off: endpoint changes, in a file that also holds
// the Service (as generated manifests do) or in a file of their own, are
// published all the same, so they took the endpoint hold-off.
func TestFileSourceEndpointFlipTakesTheEndpointHoldOff(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "echo.yaml")
	write(t, a, echoService+"---\n"+echoSlice("127.0.0.1", "127.0.0.2"))
	r := runFileSource(t, &FileSource{Dir: dir, HoldOff: time.Hour, EndpointHoldOff: time.Millisecond, MaxDelay: time.Hour})
	r.waitFor(t, "initial snapshot", func(*model.Snapshot) bool { return true })

	write(t, a, echoService+"---\n"+echoSlice("127.0.0.1"))
	r.waitFor(t, "flipped endpoint", func(s *model.Snapshot) bool { return cmp.Equal(addresses(s), []string{"127.0.0.1"}) })

	b := filepath.Join(dir, "echo-2.yaml")
	write(t, b, strings.Replace(echoSlice("127.0.0.7"), "echo-1", "echo-2", 1))
	r.waitFor(t, "new EndpointSlice file", func(s *model.Snapshot) bool { return slices.Contains(addresses(s), "127.0.0.7") })
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "EndpointSlice file removed", func(s *model.Snapshot) bool { return !slices.Contains(addresses(s), "127.0.0.7") })
}

// BenchmarkFileScanFlip measures one endpoint flip in a tree of 1,000
// Service files (a Service and a 10-endpoint EndpointSlice each), from the
// file's event to the published snapshot: re-reading the changed file
// only, and rescanning the whole tree as a directory event does.
func BenchmarkFileScanFlip(b *testing.B) {
	dir := b.TempDir()
	const services = 1000
	file := func(i, flip int) (string, string) {
		var s strings.Builder
		fmt.Fprintf(&s, "apiVersion: v1\nkind: Service\nmetadata: {name: s%d, namespace: ns%d}\nspec:\n  ports:\n  - {name: grpc, port: 8080}\n---\n", i, i/50)
		fmt.Fprintf(&s, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s%d-1, namespace: ns%d, labels: {kubernetes.io/service-name: s%d}}\naddressType: IPv4\nports: [{name: grpc, port: 8080}]\nendpoints:\n", i, i/50, i)
		for e := range 10 {
			fmt.Fprintf(&s, "- addresses: [10.%d.%d.%d]\n  conditions: {ready: %t}\n", i/250, i%250, e, e != flip)
		}
		return filepath.Join(dir, fmt.Sprintf("ns%d", i/50), fmt.Sprintf("s%d.yaml", i)), s.String()
	}
	for i := range services {
		p, c := file(i, -1)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	flips := make([]int, services) // so that every write changes its file
	for _, mode := range []string{"changed file", "full rescan"} {
		b.Run(mode, func(b *testing.B) {
			w, err := fsnotify.NewWatcher()
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			published := 0
			f := newFileScan(&FileSource{Dir: dir, OnError: func(err error) { b.Fatal(err) }}, slog.New(slog.DiscardHandler), w, func(*model.Snapshot) { published++ })
			f.hold = func() { b.Fatal("held") }
			f.build(Burst{})
			i := 0
			for b.Loop() {
				i++
				k := i % services
				flips[k]++
				p, c := file(k, flips[k]%10)
				if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
					b.Fatal(err)
				}
				burst := Burst{Endpoints: true}
				if mode == "full rescan" {
					f.mu.Lock()
					f.rescan = true
					f.mu.Unlock()
				} else {
					f.note(p)
				}
				f.build(burst)
			}
			if published != b.N+1 {
				b.Fatalf("%d publishes for %d flips", published, b.N)
			}
		})
	}
}

// TestFileScanRemembersIncrementally: after the first save, the memory is
// brought up to date from the files that changed, and holds exactly what a
// save of every file would: a file rewritten, one removed, one added, a
// broken edit (which keeps its last good content).
func TestFileScanRemembersIncrementally(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "sub", "b.yaml"), filepath.Join(dir, "c.yaml")
	write(t, a, echoService+"---\n"+echoSlice("127.0.0.1"))
	write(t, b, breakerPolicy)
	d := newDriven(t, dir)
	mem := &memory{}
	d.src.Memory = mem
	d.build(Burst{})
	check := func(t *testing.T, want map[string]string) {
		t.Helper()
		got := map[string]string{}
		for k, v := range mem.files {
			got[k] = string(v)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("memory (-want +got):\n%s", diff)
		}
	}
	check(t, map[string]string{"a.yaml": echoService + "---\n" + echoSlice("127.0.0.1"), "sub/b.yaml": breakerPolicy})
	saves := mem.saves

	write(t, a, echoService+"---\n"+echoSlice("127.0.0.2"))
	write(t, c, strings.Replace(breakerPolicy, "name: breaker", "name: other", 1))
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{a, b, c} {
		d.note(p)
	}
	d.build(Burst{})
	check(t, map[string]string{
		"a.yaml": echoService + "---\n" + echoSlice("127.0.0.2"),
		"c.yaml": strings.Replace(breakerPolicy, "name: breaker", "name: other", 1),
	})

	write(t, c, "kind: [broken\n")
	d.note(c)
	d.build(Burst{})
	if mem.saves != saves+1 {
		t.Fatalf("%d saves after a broken edit changed no good content, want none", mem.saves-saves-1)
	}
}
