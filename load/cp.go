package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CPSpec says how to run the control plane under test.
type CPSpec struct {
	// Command is the program and its leading arguments: bin/fjord-cp, or
	// fjord-load's own "controlplane" command, which adds /debug/pprof.
	Command []string
	// ConfigDir, DataDir, XDSAddress and MonitoringAddress become fjord-cp's
	// flags of the same names.
	ConfigDir, DataDir, XDSAddress, MonitoringAddress string
	// Kubeconfig, if set, runs the control plane in Kubernetes mode
	// (--kubeconfig) instead of on ConfigDir and DataDir.
	Kubeconfig string
	// Args are further flags (--debounce, --max-delay, ...).
	Args []string
	// Env is added to the process's environment (GOGC=..., GODEBUG=...,
	// GRPC_GO_LOG_SEVERITY_LEVEL=info, ...).
	Env []string
	// LogPath receives the control plane's output.
	LogPath string
	// PprofURL is the base URL under which /debug/pprof/ is served, "" if
	// nowhere.
	PprofURL string
}

// ControlPlane is a fjord-cp process the harness started, or one it
// attached to (then it cannot be restarted, and Pid may be 0).
type ControlPlane struct {
	spec CPSpec
	http *http.Client

	mu      sync.Mutex
	cmd     *exec.Cmd
	pid     int
	exited  chan struct{}
	waitErr error
	events  []cpEvent
}

// cpEvent is a line of the control plane's log the harness times phases
// with: a finished build ("config built") or cache update ("xds cache
// updated"), with the time it was logged and the duration it reports.
type cpEvent struct {
	build bool // else cache update
	end   time.Time
	took  time.Duration
}

// NewControlPlane returns a control plane to Start.
func NewControlPlane(spec CPSpec) *ControlPlane {
	return &ControlPlane{spec: spec, http: &http.Client{Timeout: 30 * time.Second}}
}

// AttachControlPlane measures a control plane the harness did not start;
// pid, if not 0, lets it read CPU time and memory from /proc rather than
// /metrics.
func AttachControlPlane(xdsAddress, monitoringAddress string, pid int, pprofURL string) *ControlPlane {
	cp := NewControlPlane(CPSpec{XDSAddress: xdsAddress, MonitoringAddress: monitoringAddress, PprofURL: pprofURL})
	cp.pid = pid
	return cp
}

// Started reports whether the harness runs the process itself.
func (cp *ControlPlane) Started() bool { return len(cp.spec.Command) > 0 }

// XDSAddress is the address proxies dial.
func (cp *ControlPlane) XDSAddress() string { return cp.spec.XDSAddress }

// Start runs the process; it returns once the process is started, not
// once it is ready (see WaitReady).
func (cp *ControlPlane) Start() error {
	if !cp.Started() {
		return errors.New("cannot start a control plane the harness attached to")
	}
	args := append(cp.spec.Command[1:len(cp.spec.Command):len(cp.spec.Command)],
		"--xds-address", cp.spec.XDSAddress,
		"--monitoring-address", cp.spec.MonitoringAddress,
	)
	if cp.spec.Kubeconfig != "" {
		args = append(args, "--kubeconfig", cp.spec.Kubeconfig)
	} else {
		args = append(args, "--config-dir", cp.spec.ConfigDir, "--data-dir", cp.spec.DataDir)
	}
	args = append(args, cp.spec.Args...)
	logFile, err := os.OpenFile(cp.spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("control plane log: %w", err)
	}
	cmd := exec.Command(cp.spec.Command[0], args...)
	cmd.Env = append(os.Environ(), cp.spec.Env...)
	// If the harness dies without stopping it, the kernel ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", cp.spec.Command[0], err)
	}
	fmt.Fprintf(logFile, "--- %s started, pid %d\n", strings.Join(append(slices.Clone(cp.spec.Env), append([]string{cp.spec.Command[0]}, args...)...), " "), cmd.Process.Pid)
	exited := make(chan struct{})
	cp.mu.Lock()
	cp.cmd, cp.pid, cp.exited, cp.waitErr = cmd, cmd.Process.Pid, exited, nil
	cp.mu.Unlock()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		cp.scanLog(pr, logFile)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-copied
		logFile.Close()
		cp.mu.Lock()
		cp.waitErr = err
		cp.mu.Unlock()
		close(exited)
	}()
	return nil
}

var (
	logTime     = regexp.MustCompile(`^time=(\S+)`)
	logDuration = regexp.MustCompile(` duration=(\S+)`)
)

// scanLog copies the control plane's output to w and records the build and
// cache update events.
func (cp *ControlPlane) scanLog(r io.Reader, w io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		build := strings.Contains(line, `msg="config built"`)
		if !build && !strings.Contains(line, `msg="xds cache updated"`) {
			continue
		}
		tm, dm := logTime.FindStringSubmatch(line), logDuration.FindStringSubmatch(line)
		if tm == nil || dm == nil {
			continue
		}
		end, err1 := time.Parse(time.RFC3339Nano, tm[1])
		took, err2 := time.ParseDuration(dm[1])
		if err1 != nil || err2 != nil {
			continue
		}
		cp.mu.Lock()
		cp.events = append(cp.events, cpEvent{build: build, end: end, took: took})
		cp.mu.Unlock()
	}
	_, _ = io.Copy(w, r) // an over-long line: keep the pipe drained
}

// builds returns the builds that ended after from, each with the time its
// cache updates took.
func (cp *ControlPlane) builds(from time.Time) []buildTiming {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []buildTiming
	var cache time.Duration
	for _, e := range cp.events {
		if !e.build {
			cache += e.took
			continue
		}
		if e.end.After(from) {
			out = append(out, buildTiming{start: e.end.Add(-e.took), end: e.end, took: e.took, cache: cache})
		}
		cache = 0
	}
	return out
}

// buildTiming is one build: from the snapshot's publication to the cache
// holding it, and the part of it spent in cache updates that changed
// something (unchanged kinds are logged at debug level only).
type buildTiming struct {
	start, end  time.Time
	took, cache time.Duration
}

// Pid is the process id, 0 if unknown.
func (cp *ControlPlane) Pid() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.pid
}

// WaitReady polls /readyz until it answers 200, failing at once if the
// process exits.
func (cp *ControlPlane) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + cp.spec.MonitoringAddress + "/readyz"
	last := "no answer"
	for {
		cp.mu.Lock()
		exited := cp.exited
		cp.mu.Unlock()
		if exited != nil {
			select {
			case <-exited:
				return fmt.Errorf("control plane exited before it was ready: %v (log: %s)", cp.exitErr(), cp.spec.LogPath)
			default:
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := cp.http.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("control plane not ready after %v (%s): last answer %s", timeout, url, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitListening waits until the xDS address accepts connections.
func (cp *ControlPlane) WaitListening(ctx context.Context) error {
	for {
		c, err := net.DialTimeout("tcp", cp.spec.XDSAddress, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("xds address %s: %w", cp.spec.XDSAddress, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) exitErr() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.waitErr
}

// ErrKilled is returned by Stop when the process did not exit within the
// grace period after SIGTERM and was killed, as Kubernetes kills a pod
// after its termination grace period.
var ErrKilled = errors.New("control plane killed: it did not exit after SIGTERM")

// Stop sends SIGTERM to the process by pid and waits for it, killing it
// after grace. It returns the exit error (nil for a clean exit, ErrKilled
// after a kill); it is a no-op when the harness did not start the process
// or it is not running.
func (cp *ControlPlane) Stop(grace time.Duration) error {
	cp.mu.Lock()
	cmd, exited := cp.cmd, cp.exited
	cp.mu.Unlock()
	if cmd == nil {
		return nil
	}
	killed := false
	select {
	case <-exited:
	default:
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(grace):
			_ = cmd.Process.Kill()
			killed = true
			<-exited
		}
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.cmd = nil
	if killed {
		return fmt.Errorf("%w within %v (log: %s)", ErrKilled, grace, cp.spec.LogPath)
	}
	return cp.waitErr
}

// Sample is the control plane's resource use at one moment.
type Sample struct {
	At time.Time `json:"at"`
	// CPUSeconds is user + system time since the process started.
	CPUSeconds float64 `json:"cpuSeconds"`
	RSSBytes   float64 `json:"rssBytes"`
	// HeapInuseBytes and Goroutines come from /metrics (Go runtime).
	HeapInuseBytes float64 `json:"heapInuseBytes"`
	Goroutines     float64 `json:"goroutines"`
	// HeapFreeBytes is heap memory the Go runtime holds free but has not
	// returned to the system yet (idle minus released), and
	// StackInuseBytes the goroutine stacks: with HeapInuseBytes, what
	// resident memory is made of.
	HeapFreeBytes   float64 `json:"heapFreeBytes"`
	StackInuseBytes float64 `json:"stackInuseBytes"`
	// BuildSeconds and Builds are fjord_build_seconds' sum and count.
	BuildSeconds float64 `json:"buildSeconds"`
	Builds       float64 `json:"builds"`
	// Pushes is fjord_xds_pushes_total over every type; Connected is
	// fjord_xds_connected_proxies over every kind.
	Pushes    float64 `json:"pushes"`
	Connected float64 `json:"connected"`
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// Linux fixes it at 100 on every architecture Go supports.
const clockTicks = 100

// Sample reads /proc/<pid>/stat and status (when the pid is known) and
// /metrics.
func (cp *ControlPlane) Sample(ctx context.Context) (Sample, error) {
	s := Sample{At: time.Now()}
	m, err := cp.metrics(ctx)
	if err != nil {
		return s, err
	}
	s.HeapInuseBytes = m["go_memstats_heap_inuse_bytes"]
	s.Goroutines = m["go_goroutines"]
	s.HeapFreeBytes = m["go_memstats_heap_idle_bytes"] - m["go_memstats_heap_released_bytes"]
	s.StackInuseBytes = m["go_memstats_stack_inuse_bytes"]
	s.BuildSeconds = m["fjord_build_seconds_sum"]
	s.Builds = m["fjord_build_seconds_count"]
	s.Pushes = m["fjord_xds_pushes_total"]
	s.Connected = m["fjord_xds_connected_proxies"]
	s.CPUSeconds = m["process_cpu_seconds_total"]
	s.RSSBytes = m["process_resident_memory_bytes"]
	if pid := cp.Pid(); pid != 0 {
		if s.CPUSeconds, err = procCPUSeconds(pid); err != nil {
			return s, err
		}
		if s.RSSBytes, err = procRSS(pid); err != nil {
			return s, err
		}
	}
	return s, nil
}

// metrics reads /metrics and sums every series of a metric over its
// labels.
func (cp *ControlPlane) metrics(ctx context.Context) (map[string]float64, error) {
	url := "http://" + cp.spec.MonitoringAddress + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := cp.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format, summing the series of each
// metric name.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[name] += v
	}
	return out, sc.Err()
}

// procCPUSeconds is utime + stime of a process.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after it are
	// state (3) ... utime (14), stime (15).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the command", pid, len(f))
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return (utime + stime) / clockTicks, nil
}

// procRSS is VmRSS of a process, in bytes.
func procRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q", pid, rest)
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// Profile fetches a pprof profile (e.g. "profile?seconds=30", "heap") into
// path.
func (cp *ControlPlane) Profile(ctx context.Context, which, path string) error {
	if cp.spec.PprofURL == "" {
		return errors.New("the control plane serves no /debug/pprof")
	}
	url := cp.spec.PprofURL + "/debug/pprof/" + which
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := &http.Client{} // a CPU profile takes as long as it was asked to
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("fetching %s: %w", url, err)
	}
	return f.Close()
}

// HasPprof reports whether the monitoring address serves /debug/pprof/.
func HasPprof(ctx context.Context, monitoringAddress string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+monitoringAddress+"/debug/pprof/", nil)
	if err != nil {
		return false
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// FreeAddress returns a loopback address with a port free at the time of
// the call.
func FreeAddress() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
