package watcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/fjordmesh/fjord/watcher/model"
)

// FileSource is the standalone-mode Source: it reads Kubernetes YAML from a
// directory tree and publishes it as the model, again after every coalesced
// burst of changes. Files ending in .yaml, .yml or .json are read, in every
// subdirectory; names starting with "." are skipped, which leaves out
// editors' temporary files and the "..data" internals of a mounted
// ConfigMap (whose visible files are symlinks, and are followed).
//
// The whole tree is read at startup; afterwards a change re-reads only the
// files named by its events, so a flip costs one file at any tree size. A
// directory created, removed or renamed, a lost event (a watch queue
// overflow) or a ConfigMap's data swap rescans the whole tree. A change
// that alters nothing but EndpointSlices is published after the short
// EndpointHoldOff, any other after HoldOff.
//
// A file that does not parse is logged with its path and reason and keeps
// contributing its last good content, so a half-saved edit never takes
// objects away from the proxies; a file that was never good contributes
// nothing. With a Memory, the last good content survives restarts too. When
// two files define the same object, the one whose path sorts first wins and
// the other definition is reported.
//
// A ResiliencePolicy without metadata.creationTimestamp is dated by when
// this run first saw its file, so of two policies competing at one level the
// one in the file that appeared first wins. Dates have second precision, so
// files read at startup usually tie and the first by namespace/name wins.
// Set the timestamp in the file to pin precedence.
type FileSource struct {
	// Dir is the directory to read.
	Dir string
	// HoldOff and MaxDelay tune the coalescing of changes; zero means the
	// defaults (DefaultHoldOff, DefaultMaxDelay). EndpointHoldOff replaces
	// HoldOff when the changed files altered nothing but EndpointSlices;
	// zero means DefaultEndpointHoldOff.
	HoldOff, EndpointHoldOff, MaxDelay time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
	// OnError, if set, is called once for every configuration error found
	// (a file that does not parse, an object defined twice), besides the
	// log line; the control plane counts them.
	OnError func(error)
	// Memory, if set, keeps the last good content of every file across
	// restarts: a file that is broken when the control plane starts
	// contributes what it held when it last parsed, as it would have had
	// the control plane kept running.
	Memory FileMemory
}

// FileMemory stores the last good content of each file, keyed by its path
// relative to the directory (so the same tree mounted elsewhere still
// matches).
type FileMemory interface {
	LoadFiles() (map[string][]byte, error)
	SaveFiles(map[string][]byte) error
}

// fileState is what the source remembers about one file.
type fileState struct {
	// firstSeen stands in for the creationTimestamp of policies that have
	// none (see Decode).
	firstSeen time.Time
	read      bool // sum is set
	sum       [sha256.Size]byte
	good      *Objects // last content that parsed, nil if none ever did
	goodData  []byte   // the bytes good was decoded from
}

// fileScan is the state of one Run. Builds, which the coalescer serialises,
// own everything but the fields under mu, which the event loop shares.
type fileScan struct {
	src       *FileSource
	log       *slog.Logger
	watcher   *fsnotify.Watcher
	files     map[string]*fileState
	paths     []string        // the keys of files, sorted; nil when they changed
	scanned   bool            // a full scan has succeeded
	dups      map[string]bool // duplicate reports already made
	published *model.Snapshot
	publish   func(*model.Snapshot)
	// hold asks the coalescer to wait out the normal hold-off (Coalescer.Hold).
	hold func()
	// seeds is the last good content from the previous run, by relative
	// path, used by the first build only; saved is what Memory holds.
	// unsaved are the files whose good content may differ from it, and
	// unsavedAll says any file's may (nothing was saved by this run yet).
	seeds      map[string][]byte
	saved      map[string][]byte
	unsaved    map[string]bool
	unsavedAll bool
	// changed says that the good content of some file changed since the
	// last snapshot was assembled, and config that it changed in more than
	// EndpointSlices.
	changed, config bool

	mu sync.Mutex
	// watched are the watched directories.
	watched map[string]bool
	// dirty are the config file paths with events since the last build;
	// rescan asks for a full scan instead.
	dirty  map[string]bool
	rescan bool
}

// change is what an event means for the next build.
type change int

const (
	changeNone change = iota // nothing the source reads
	changeFile               // a config file: re-read it
	changeTree               // a directory or unknown change: rescan all
)

// Run implements Source. It fails at once if Dir cannot be read or watched;
// later errors (a broken file, the directory vanishing) are logged and the
// last snapshot stays published.
func (s *FileSource) Run(ctx context.Context, publish func(*model.Snapshot)) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	info, err := os.Stat(s.Dir)
	if err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("config dir %s: not a directory", s.Dir)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching config dir %s: %w", s.Dir, err)
	}
	defer w.Close()
	scan := newFileScan(s, log, w, publish)
	if err := scan.watch(scan.src.Dir); err != nil {
		return err
	}
	if s.Memory != nil {
		if scan.seeds, err = s.Memory.LoadFiles(); err != nil {
			scan.reportError("cannot load the files' last good content from the previous run", err, "dir", s.Dir)
		}
		scan.saved = scan.seeds
	}
	c := NewCoalescer(scan.build, CoalesceOptions{HoldOff: s.HoldOff, EndpointHoldOff: s.EndpointHoldOff, MaxDelay: s.MaxDelay})
	scan.hold = c.Hold
	defer c.Stop() // runs before w.Close: no build after Run returns
	c.MarkSynced()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			switch scan.note(ev.Name) {
			case changeFile:
				// Possibly endpoints only; the build checks (fileScan.build).
				c.TriggerEndpoints()
			case changeTree:
				c.Trigger()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflowed event queue means changes were lost: rescan.
			log.Warn("config dir watch error, rescanning", "dir", s.Dir, "error", err)
			scan.mu.Lock()
			scan.rescan = true
			scan.mu.Unlock()
			c.Trigger()
		}
	}
}

func newFileScan(s *FileSource, log *slog.Logger, w *fsnotify.Watcher, publish func(*model.Snapshot)) *fileScan {
	// A clean Dir spells paths the way the walk and the events do.
	src := *s
	src.Dir = filepath.Clean(s.Dir)
	return &fileScan{
		src: &src, log: log, watcher: w, publish: publish, hold: func() {},
		files: map[string]*fileState{}, dups: map[string]bool{}, unsaved: map[string]bool{}, unsavedAll: true,
		watched: map[string]bool{}, dirty: map[string]bool{},
	}
}

func (f *fileScan) watch(dir string) error {
	if err := f.watcher.Add(dir); err != nil {
		return fmt.Errorf("watching config dir %s: %w", dir, err)
	}
	f.mu.Lock()
	f.watched[dir] = true
	f.mu.Unlock()
	return nil
}

// note records the event on path p for the next build. A visible config
// file is re-read on its own. A directory created, removed or renamed, the
// config dir itself, and the "..data" swap of a mounted ConfigMap (whose
// visible files are symlinks that do not change) need a full rescan. Other
// names, editors' hidden temporary files among them, change nothing.
func (f *fileScan) note(p string) change {
	rel, err := filepath.Rel(f.src.Dir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return f.noteRescan()
	}
	base := filepath.Base(p)
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if strings.HasPrefix(part, ".") {
			if strings.HasPrefix(base, "..") {
				return f.noteRescan()
			}
			return changeNone
		}
	}
	f.mu.Lock()
	wasDir := f.watched[p]
	f.mu.Unlock()
	if wasDir {
		return f.noteRescan()
	}
	if configFile(base) {
		f.mu.Lock()
		f.dirty[p] = true
		f.mu.Unlock()
		return changeFile
	}
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return f.noteRescan()
	}
	return changeNone
}

func (f *fileScan) noteRescan() change {
	f.mu.Lock()
	f.rescan = true
	f.mu.Unlock()
	return changeTree
}

func (f *fileScan) reportError(msg string, err error, args ...any) {
	f.log.Error(msg, append(args, "error", err)...)
	if f.src.OnError != nil {
		f.src.OnError(err)
	}
}

// build brings the files up to date and publishes the result if it changed.
// It re-reads only the files that had events, unless a directory changed or
// events were lost: then it rescans the whole tree, which is robust against
// lost, reordered or coalesced events (renames by editors, ConfigMap
// symlink swaps); unchanged files are recognised by their hash and not
// parsed again.
//
// The event loop cannot tell an endpoint change from a config change
// without reading the file, so every file event comes as a possible
// endpoint change. A build after the short endpoint hold-off that finds
// more than EndpointSlices changed publishes nothing yet and holds the
// burst for the normal hold-off, so that config edits stay batched.
func (f *fileScan) build(b Burst) {
	f.mu.Lock()
	dirty, rescan := f.dirty, f.rescan
	f.dirty, f.rescan = map[string]bool{}, false
	f.mu.Unlock()
	if rescan || !f.scanned || !f.update(dirty) {
		if !f.scan() {
			return
		}
	}
	f.seeds = nil
	// What the files hold is saved after the build is handed on, which
	// is what waits for it; the save itself is deferred (store.Defer).
	defer f.remember()
	if f.published != nil {
		if !f.changed {
			return
		}
		if b.Endpoints && f.config {
			f.hold()
			return
		}
	}
	snap := f.assemble(f.sortedPaths(), f.published != nil && !f.config && len(f.dups) == 0)
	// The files' changes may cancel out (an object moved from one file to
	// another) or hide behind a duplicate, so the snapshots are compared;
	// that is cheap, as they share their unchanged slices. It is left out
	// for endpoint changes without duplicates, which at worst republish an
	// identical snapshot (an EndpointSlice moved between files in one
	// burst).
	same := false
	if f.published != nil && (f.config || len(f.dups) > 0) {
		same = reflect.DeepEqual(f.published, snap)
	}
	f.changed, f.config = false, false
	if same {
		return
	}
	f.published = snap
	f.publish(snap)
}

// replaced records that the good content of file p went from old to new
// (either nil when there is none) for the next build.
func (f *fileScan) replaced(p string, old, new *Objects) {
	var o, n Objects
	if old != nil {
		o = *old
	}
	if new != nil {
		n = *new
	}
	if !same(o.Services, n.Services) || !same(o.Policies, n.Policies) || !same(o.Routes, n.Routes) {
		f.changed, f.config = true, true
	}
	if !same(o.EndpointSlices, n.EndpointSlices) {
		f.changed = true
	}
	if f.src.Memory != nil {
		f.unsaved[p] = true
	}
}

func same[T any](a, b []T) bool {
	return len(a) == 0 && len(b) == 0 || reflect.DeepEqual(a, b)
}

// sortInner puts the inner lists of a file's objects (ports, endpoints) in
// snapshot order once, when the file is read, so that every snapshot
// assembled from them can share them instead of copying and sorting them
// again: they are never modified afterwards.
func sortInner(o *Objects) {
	for i := range o.Services {
		o.Services[i].SortInner()
	}
	for i := range o.EndpointSlices {
		o.EndpointSlices[i].SortInner()
	}
}

// scan reads the whole tree, reporting false if Dir cannot be read.
func (f *fileScan) scan() bool {
	paths, err := f.list()
	if err != nil {
		f.reportError("cannot read config dir, keeping the last config", err, "dir", f.src.Dir)
		return false
	}
	present := map[string]bool{}
	for _, p := range paths {
		present[p] = true
		f.read(p)
	}
	for p := range f.files {
		if !present[p] {
			f.forget(p)
		}
	}
	f.paths = paths
	f.scanned = true
	return true
}

// update re-reads the config files with events. It reports false, having
// changed nothing, when one of them turns out to be a directory, or is gone
// without its directory being watched, which only a full scan can sort out.
func (f *fileScan) update(dirty map[string]bool) bool {
	type found struct {
		path string
		file bool // a regular file (or a symlink to one); else gone or other
	}
	var todo []found
	for p := range dirty {
		st, err := os.Stat(p)
		switch {
		case err == nil && st.IsDir():
			return false
		case err == nil:
			todo = append(todo, found{p, st.Mode().IsRegular()})
		case errors.Is(err, fs.ErrNotExist):
			f.mu.Lock()
			parentWatched := f.watched[filepath.Dir(p)]
			f.mu.Unlock()
			if !parentWatched {
				return false
			}
			todo = append(todo, found{p, false})
		default:
			return false
		}
	}
	for _, t := range todo {
		if t.file {
			f.read(t.path)
		} else {
			f.forget(t.path)
		}
	}
	return true
}

// forget drops a file that is gone.
func (f *fileScan) forget(p string) {
	st, ok := f.files[p]
	if !ok {
		return
	}
	delete(f.files, p)
	f.paths = nil
	if st.good != nil {
		f.replaced(p, st.good, nil)
	}
}

func (f *fileScan) sortedPaths() []string {
	if f.paths == nil {
		f.paths = slices.Sorted(maps.Keys(f.files))
	}
	return f.paths
}

// list returns the config files under Dir, sorted, and makes sure every
// directory is watched before its files are read, so that a file created
// in a new directory is either listed now or causes an event. Directories
// gone from the tree lose their watch first: a directory renamed within the
// tree is watched again under its new name.
func (f *fileScan) list() ([]string, error) {
	for {
		var files, newDirs []string
		dirs := map[string]bool{}
		f.mu.Lock()
		watched := maps.Clone(f.watched)
		f.mu.Unlock()
		err := filepath.WalkDir(f.src.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if p == f.src.Dir {
					return err
				}
				// Something vanished mid-walk; the event it caused rescans.
				return nil
			}
			if p != f.src.Dir && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				dirs[p] = true
				if !watched[p] {
					newDirs = append(newDirs, p)
				}
				return nil
			}
			if !configFile(d.Name()) {
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
					return nil
				}
			} else if !d.Type().IsRegular() {
				return nil
			}
			files = append(files, p)
			return nil
		})
		if err != nil {
			return nil, err
		}
		for d := range watched {
			if !dirs[d] {
				// Usually the kernel dropped the watch with the directory;
				// after a rename it still follows it under the old name.
				_ = f.watcher.Remove(d)
				f.mu.Lock()
				delete(f.watched, d)
				f.mu.Unlock()
			}
		}
		if len(newDirs) == 0 {
			sort.Strings(files)
			return files, nil
		}
		for _, d := range newDirs {
			if err := f.watch(d); err != nil {
				f.reportError("cannot watch config subdirectory", err, "dir", d)
				f.mu.Lock()
				f.watched[d] = true // do not retry on every build
				f.mu.Unlock()
			}
		}
	}
}

func configFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// read parses p if its content changed since the last build.
func (f *fileScan) read(p string) {
	st := f.files[p]
	if st == nil {
		st = &fileState{firstSeen: time.Now()}
		f.files[p] = st
		f.paths = nil
	}
	data, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return // removed since the walk; the removal event rescans
		}
		f.reportError("cannot read config file, keeping its last good content", err, "path", p)
		return
	}
	sum := sha256.Sum256(data)
	if st.read && sum == st.sum {
		return
	}
	st.read, st.sum = true, sum
	objs, err := Decode(p, data, st.firstSeen)
	if err != nil {
		if st.good == nil {
			f.recall(p, st)
		}
		f.reportError("config file rejected, keeping its last good content", err,
			"path", p, "hasLastGood", st.good != nil)
		return
	}
	for _, r := range objs.Skipped {
		f.log.Debug("skipping object of a kind the mesh does not read",
			"path", p, "document", r.Document, "apiVersion", r.APIVersion, "kind", r.Kind, "object", r.Key.String())
	}
	sortInner(objs)
	f.replaced(p, st.good, objs)
	st.good, st.goodData = objs, data
}

// recall gives a file that is broken at startup the content it had when it
// last parsed, in the previous run.
func (f *fileScan) recall(p string, st *fileState) {
	seed, ok := f.seeds[f.rel(p)]
	if !ok {
		return
	}
	objs, err := Decode(p, seed, st.firstSeen)
	if err != nil {
		f.log.Warn("last good content from the previous run no longer parses; dropping it", "path", p, "error", err)
		return
	}
	f.log.Warn("using the last good content from the previous run", "path", p)
	sortInner(objs)
	f.replaced(p, st.good, objs)
	st.good, st.goodData = objs, seed
}

// remember hands the good content of every file to Memory when it changed.
// After the first save it starts from what it saved and redoes only the
// files that changed since: an endpoint flip re-reads one file of
// thousands.
func (f *fileScan) remember() {
	if f.src.Memory == nil || !f.unsavedAll && len(f.unsaved) == 0 {
		return
	}
	var good map[string][]byte
	if f.unsavedAll || f.saved == nil {
		good = map[string][]byte{}
		for p, st := range f.files {
			if st.good != nil {
				good[f.rel(p)] = st.goodData
			}
		}
	} else {
		good = maps.Clone(f.saved)
		for p := range f.unsaved {
			if st := f.files[p]; st != nil && st.good != nil {
				good[f.rel(p)] = st.goodData
			} else {
				delete(good, f.rel(p))
			}
		}
	}
	clear(f.unsaved)
	f.unsavedAll = false
	if maps.EqualFunc(good, f.saved, bytes.Equal) {
		return
	}
	if err := f.src.Memory.SaveFiles(good); err != nil {
		f.reportError("cannot save the files' last good content", err, "dir", f.src.Dir)
		f.unsavedAll = true
		return
	}
	f.saved = good
}

func (f *fileScan) rel(p string) string {
	if r, err := filepath.Rel(f.src.Dir, p); err == nil {
		return filepath.ToSlash(r)
	}
	return p
}

// assemble merges the good content of every file into one sorted snapshot.
// paths is sorted, so on a duplicate the first path wins.
//
// With endpointsOnly, the files changed nothing but EndpointSlices since
// the published snapshot, which had no duplicates: its Services, Policies
// and Routes are still exactly what the files hold, so the new snapshot
// shares those slices instead of merging and sorting them again. Sharing
// also lets the control plane's comparison of the two snapshots stop at the
// slices' identity.
func (f *fileScan) assemble(paths []string, endpointsOnly bool) *model.Snapshot {
	type id struct {
		kind string
		key  model.Key
	}
	objects := 0
	if f.published != nil {
		objects = len(f.published.Services) + len(f.published.EndpointSlices) + len(f.published.Policies) + len(f.published.Routes)
	}
	owner := make(map[id]string, objects)
	dups := map[string]bool{}
	keep := func(kind string, key model.Key, p string) bool {
		k := id{kind, key}
		first, taken := owner[k]
		if !taken {
			owner[k] = p
			return true
		}
		msg := fmt.Sprintf("%s %s is defined in both %s and %s; using %s", kind, key, first, p, first)
		dups[msg] = true
		if !f.dups[msg] {
			f.reportError("duplicate object in config dir", errors.New(msg),
				"kind", kind, "object", key.String(), "used", first, "ignored", p)
		}
		return false
	}
	snap := &model.Snapshot{}
	if endpointsOnly {
		snap.Services, snap.Policies, snap.Routes = f.published.Services, f.published.Policies, f.published.Routes
		objects = len(f.published.EndpointSlices)
		snap.EndpointSlices = make([]model.EndpointSlice, 0, objects)
	}
	for _, p := range paths {
		st := f.files[p]
		if st == nil || st.good == nil {
			continue
		}
		// The inner slices are sorted already (sortInner) and shared.
		for _, s := range st.good.EndpointSlices {
			if keep(KindEndpointSlice, s.Key, p) {
				snap.EndpointSlices = append(snap.EndpointSlices, s)
			}
		}
		if endpointsOnly {
			continue
		}
		for _, s := range st.good.Services {
			if keep(KindService, s.Key, p) {
				snap.Services = append(snap.Services, s)
			}
		}
		for _, pol := range st.good.Policies {
			if keep(KindResiliencePolicy, pol.Key, p) {
				snap.Policies = append(snap.Policies, pol)
			}
		}
		for _, rt := range st.good.Routes {
			if keep(string(rt.Kind), rt.Key, p) {
				snap.Routes = append(snap.Routes, rt)
			}
		}
	}
	f.dups = dups
	// Sorting the whole snapshot would sort the shared inner slices in
	// place, which readers of published snapshots may be reading.
	slices.SortFunc(snap.EndpointSlices, func(a, b model.EndpointSlice) int { return a.Key.Compare(b.Key) })
	if !endpointsOnly {
		slices.SortFunc(snap.Services, func(a, b model.Service) int { return a.Key.Compare(b.Key) })
		(&model.Snapshot{Policies: snap.Policies, Routes: snap.Routes}).Sort()
	}
	return snap
}
