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
	// defaults (DefaultHoldOff, DefaultMaxDelay).
	HoldOff, MaxDelay time.Duration
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

// fileScan is the state of one Run, touched only by builds, which the
// coalescer serialises.
type fileScan struct {
	src       *FileSource
	log       *slog.Logger
	watcher   *fsnotify.Watcher
	watched   map[string]bool
	files     map[string]*fileState
	dups      map[string]bool // duplicate reports already made
	published *model.Snapshot
	publish   func(*model.Snapshot)
	// seeds is the last good content from the previous run, by relative
	// path, used by the first build only; saved is what Memory holds.
	seeds map[string][]byte
	saved map[string][]byte
}

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
	scan := &fileScan{
		src: s, log: log, watcher: w, publish: publish,
		watched: map[string]bool{}, files: map[string]*fileState{}, dups: map[string]bool{},
	}
	if err := scan.watch(s.Dir); err != nil {
		return err
	}
	if s.Memory != nil {
		if scan.seeds, err = s.Memory.LoadFiles(); err != nil {
			scan.reportError("cannot load the files' last good content from the previous run", err, "dir", s.Dir)
		}
		scan.saved = scan.seeds
	}
	c := NewCoalescer(scan.build, CoalesceOptions{HoldOff: s.HoldOff, MaxDelay: s.MaxDelay})
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
			c.Trigger()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflowed event queue means changes were lost: rescan.
			log.Warn("config dir watch error, rescanning", "dir", s.Dir, "error", err)
			c.Trigger()
		}
	}
}

func (f *fileScan) watch(dir string) error {
	if err := f.watcher.Add(dir); err != nil {
		return fmt.Errorf("watching config dir %s: %w", dir, err)
	}
	f.watched[dir] = true
	return nil
}

func (f *fileScan) reportError(msg string, err error, args ...any) {
	f.log.Error(msg, append(args, "error", err)...)
	if f.src.OnError != nil {
		f.src.OnError(err)
	}
}

// build rescans the whole tree and publishes the result if it changed.
// Rescanning rather than applying single events is simple and robust against
// lost, reordered or coalesced events (renames by editors, ConfigMap symlink
// swaps); unchanged files are recognised by their hash and not parsed again.
func (f *fileScan) build() {
	paths, err := f.list()
	if err != nil {
		f.reportError("cannot read config dir, keeping the last config", err, "dir", f.src.Dir)
		return
	}
	present := map[string]bool{}
	for _, p := range paths {
		present[p] = true
		f.read(p)
	}
	for p := range f.files {
		if !present[p] {
			delete(f.files, p)
		}
	}
	f.seeds = nil
	f.remember()
	snap := f.assemble(paths)
	if f.published != nil && reflect.DeepEqual(f.published, snap) {
		return
	}
	f.published = snap
	f.publish(snap)
}

// list returns the config files under Dir, sorted, and makes sure every
// directory is watched before its files are read, so that a file created
// in a new directory is either listed now or causes an event.
func (f *fileScan) list() ([]string, error) {
	for {
		var files, newDirs []string
		dirs := map[string]bool{}
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
				if !f.watched[p] {
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
		for d := range f.watched {
			if !dirs[d] {
				delete(f.watched, d) // the kernel dropped the watch with the directory
			}
		}
		if len(newDirs) == 0 {
			sort.Strings(files)
			return files, nil
		}
		for _, d := range newDirs {
			if err := f.watch(d); err != nil {
				f.reportError("cannot watch config subdirectory", err, "dir", d)
				f.watched[d] = true // do not retry on every build
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
	st.good, st.goodData = objs, seed
}

// remember hands the good content of every file to Memory when it changed.
func (f *fileScan) remember() {
	if f.src.Memory == nil {
		return
	}
	good := map[string][]byte{}
	for p, st := range f.files {
		if st.good != nil {
			good[f.rel(p)] = st.goodData
		}
	}
	if maps.EqualFunc(good, f.saved, bytes.Equal) {
		return
	}
	if err := f.src.Memory.SaveFiles(good); err != nil {
		f.reportError("cannot save the files' last good content", err, "dir", f.src.Dir)
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
func (f *fileScan) assemble(paths []string) *model.Snapshot {
	type id struct {
		kind string
		key  model.Key
	}
	owner := map[id]string{}
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
	for _, p := range paths {
		st := f.files[p]
		if st == nil || st.good == nil {
			continue
		}
		// Sort reorders the inner slices in place; copies keep a published
		// snapshot, which readers may still hold, from ever changing.
		for _, s := range st.good.Services {
			if keep(KindService, s.Key, p) {
				s.Ports = slices.Clone(s.Ports)
				snap.Services = append(snap.Services, s)
			}
		}
		for _, s := range st.good.EndpointSlices {
			if keep(KindEndpointSlice, s.Key, p) {
				s.Ports, s.Endpoints = slices.Clone(s.Ports), slices.Clone(s.Endpoints)
				snap.EndpointSlices = append(snap.EndpointSlices, s)
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
	snap.Sort()
	return snap
}
