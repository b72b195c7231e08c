package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
)

// fakeHAProxy answers the runtime API commands the driver sends, the way
// HAProxy 2.6 does (answers captured from it), and records them: it is how
// the unit tests see the order of commands.
type fakeHAProxy struct {
	sock string
	l    net.Listener
	wg   sync.WaitGroup

	mu       sync.Mutex
	backend  string
	order    []string // server names in config order
	servers  map[string]*fakeServer
	commands []string
	override func(cmd string) (answer string, ok bool)
}

type fakeServer struct {
	weight, initial uint32
	admin           uint32
}

func newFake(t *testing.T, servers map[string]fakeServer) *fakeHAProxy {
	t.Helper()
	f := &fakeHAProxy{sock: filepath.Join(t.TempDir(), "admin.sock"), backend: "web", servers: map[string]*fakeServer{}}
	for name, s := range servers {
		f.servers[name] = &s
		f.order = append(f.order, name)
	}
	slices.Sort(f.order)
	l, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	f.l = l
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		l.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeHAProxy) serve() {
	defer f.wg.Done()
	for {
		conn, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				return
			}
			conn.Write([]byte(f.answer(strings.TrimSuffix(line, "\n"))))
		}()
	}
}

func (f *fakeHAProxy) answer(cmd string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commands = append(f.commands, cmd)
	if f.override != nil {
		if ans, ok := f.override(cmd); ok {
			return ans
		}
	}
	args := strings.Fields(cmd)
	switch {
	case len(args) == 4 && args[0] == "show" && args[1] == "servers" && args[2] == "state":
		if args[3] != f.backend {
			return "Can't find backend.\n\n"
		}
		var b strings.Builder
		b.WriteString("1\n# be_id be_name srv_id srv_name srv_op_state srv_admin_state srv_uweight srv_iweight srv_fqdn\n")
		for i, name := range f.order {
			s := f.servers[name]
			fmt.Fprintf(&b, "3 %s %d %s 2 %d %d %d -\n", f.backend, i+1, name, s.admin, s.weight, s.initial)
		}
		return b.String() + "\n"
	case len(args) == 4 && args[0] == "set" && args[1] == "weight":
		s, ans := f.lookup(args[2])
		if s == nil {
			return ans
		}
		w, err := strconv.Atoi(args[3])
		if err != nil || w < 0 || w > 256 {
			return "Absolute weight can only be between 0 and 256 inclusive.\n\n"
		}
		s.weight = uint32(w)
		return "\n"
	case len(args) == 5 && args[0] == "set" && args[1] == "server" && args[3] == "state":
		s, ans := f.lookup(args[2])
		if s == nil {
			return ans
		}
		switch args[4] {
		case "ready":
			s.admin = 0
		case "drain":
			s.admin = adminForcedDrain
		case "maint":
			s.admin = adminForcedMaint
		default:
			return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
		}
		return "\n"
	case len(args) == 5 && args[0] == "show" && args[1] == "stat" && args[3] == "4" && args[4] == "-1":
		if args[2] != f.backend {
			return "No such proxy.\n\n"
		}
		var b strings.Builder
		b.WriteString("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,hrsp_2xx,hrsp_4xx,hrsp_5xx,cli_abrt,srv_abrt,\n")
		for i, name := range f.order {
			s := f.servers[name]
			status := "UP"
			if s.admin&adminForcedMaint != 0 {
				status = "MAINT"
			}
			fmt.Fprintf(&b, "%s,%s,%d,0,%d,0,,%d,0,0,,0,,%d,%d,%d,%d,%s,%d,1,0,%d,0,%d,0,0,\n",
				f.backend, name, i, i+1, 10*(i+1), i, i, i, i, status, s.weight, 9*(i+1), i)
		}
		return b.String() + "\n"
	}
	return "Unknown command, but maybe one of the following ones is a better match:\n  help\n\n"
}

func (f *fakeHAProxy) lookup(bs string) (*fakeServer, string) {
	b, s, ok := strings.Cut(bs, "/")
	if !ok || b != f.backend {
		return nil, "No such backend.\n\n"
	}
	srv := f.servers[s]
	if srv == nil {
		return nil, "No such server.\n\n"
	}
	return srv, ""
}

// takeCommands returns the commands received since the last call.
func (f *fakeHAProxy) takeCommands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.commands
	f.commands = nil
	return c
}

func (f *fakeHAProxy) server(name string) fakeServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.servers[name]
}

func newDriver(t testing.TB, cfg Config) *Driver {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func blueGreen(sock string) Config {
	return Config{Socket: sock, Backend: "web", Servers: map[string]string{"blue": "blue", "green": "green"}}
}

func TestDriver_NewValidates(t *testing.T) {
	ok := blueGreen("/run/haproxy/admin.sock")
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no socket", func(c *Config) { c.Socket = "" }, "Config.Socket is required"},
		{"no backend", func(c *Config) { c.Backend = "" }, "Config.Backend"},
		{"backend smuggles a command", func(c *Config) { c.Backend = "web;shutdown" }, "Config.Backend"},
		{"no servers", func(c *Config) { c.Servers = nil }, "Config.Servers is empty"},
		{"empty spec name", func(c *Config) { c.Servers = map[string]string{"": "blue"} }, "empty backend name"},
		{"bad server name", func(c *Config) { c.Servers = map[string]string{"blue": "blue\nset weight"} }, `Config.Servers["blue"]`},
		{"shared server", func(c *Config) { c.Servers = map[string]string{"blue": "s1", "green": "s1"} }, `Config.Servers["blue"] and Config.Servers["green"] are both server "s1"`},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "Config.Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mutate(&c)
			_, err := New(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	d, err := New(ok)
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if d.cfg.Timeout != DefaultTimeout {
		t.Fatalf("Timeout = %v, want default %v", d.cfg.Timeout, DefaultTimeout)
	}
}

func TestDriver_ApplyRaisesBeforeLowering(t *testing.T) {
	f := newFake(t, map[string]fakeServer{
		"blue":  {weight: 100, initial: 100},
		"green": {weight: 0, initial: 0},
	})
	d := newDriver(t, blueGreen(f.sock))
	ctx := context.Background()

	steps := []struct {
		weights map[string]uint32
		want    []string
	}{
		{map[string]uint32{"blue": 0, "green": 100}, []string{"show servers state web", "set weight web/green 100", "set weight web/blue 0"}},
		{map[string]uint32{"blue": 100, "green": 0}, []string{"show servers state web", "set weight web/blue 100", "set weight web/green 0"}},
		{map[string]uint32{"blue": 80, "green": 20}, []string{"show servers state web", "set weight web/green 20", "set weight web/blue 80"}},
		{map[string]uint32{"blue": 80, "green": 20}, []string{"show servers state web"}}, // nothing to change
		{map[string]uint32{"green": 50}, []string{"show servers state web", "set weight web/green 50"}},
	}
	for i, s := range steps {
		if err := d.Apply(ctx, s.weights); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := f.takeCommands(); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("step %d Apply(%v) sent\n%q\nwant\n%q", i, s.weights, got, s.want)
		}
	}
	if got, err := d.Weights(ctx); err != nil || !reflect.DeepEqual(got, map[string]uint32{"blue": 80, "green": 50}) {
		t.Fatalf("Weights = %v, %v", got, err)
	}
}

func TestDriver_ApplyMakesReadyOnlyForPositiveWeight(t *testing.T) {
	f := newFake(t, map[string]fakeServer{
		"blue":  {weight: 100, initial: 100},
		"green": {weight: 100, initial: 0, admin: adminForcedMaint},
	})
	d := newDriver(t, blueGreen(f.sock))
	ctx := context.Background()

	// green is in maintenance at weight 100: it gains traffic, so it goes
	// first, and needs only "ready".
	if err := d.Apply(ctx, map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	want := []string{"show servers state web", "set server web/green state ready", "set weight web/blue 0"}
	if got := f.takeCommands(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %q, want %q", got, want)
	}

	// Weight 0 never puts a server in maintenance: in-flight requests finish.
	if err := d.Apply(ctx, map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	want = []string{"show servers state web", "set weight web/blue 100", "set weight web/green 0"}
	if got := f.takeCommands(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %q, want %q", got, want)
	}
	if s := f.server("green"); s.admin != 0 {
		t.Fatalf("green admin state = %#x after weight 0, want 0 (up)", s.admin)
	}

	// A drained server brought to a new weight: weight first, then ready.
	if err := d.SetState(ctx, "green", StateDrain); err != nil {
		t.Fatal(err)
	}
	f.takeCommands()
	if err := d.Apply(ctx, map[string]uint32{"green": 30}); err != nil {
		t.Fatal(err)
	}
	want = []string{"show servers state web", "set weight web/green 30", "set server web/green state ready"}
	if got := f.takeCommands(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %q, want %q", got, want)
	}

	// A server in maintenance set to 0 gets the weight and stays down.
	if err := d.SetState(ctx, "green", StateMaint); err != nil {
		t.Fatal(err)
	}
	f.takeCommands()
	if err := d.Apply(ctx, map[string]uint32{"green": 0}); err != nil {
		t.Fatal(err)
	}
	want = []string{"show servers state web", "set weight web/green 0"}
	if got := f.takeCommands(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %q, want %q", got, want)
	}
}

func TestDriver_ApplyRejectsBeforeSending(t *testing.T) {
	f := newFake(t, map[string]fakeServer{"blue": {weight: 100}, "green": {}})
	d := newDriver(t, blueGreen(f.sock))
	ctx := context.Background()

	err := d.Apply(ctx, map[string]uint32{"blue": 0, "purple": 100})
	if !errors.Is(err, driver.ErrUnknownBackend) || !strings.Contains(err.Error(), `"purple"`) {
		t.Fatalf("err = %v, want ErrUnknownBackend naming purple", err)
	}
	err = d.Apply(ctx, map[string]uint32{"blue": 0, "green": 300})
	if err == nil || !strings.Contains(err.Error(), `"green"`) || !strings.Contains(err.Error(), "300") {
		t.Fatalf("err = %v, want an error naming green and 300", err)
	}
	if err := d.Apply(ctx, map[string]uint32{"green": MaxWeight}); err != nil {
		t.Fatalf("weight %d: %v", MaxWeight, err)
	}
	if got := f.takeCommands(); len(got) != 2 {
		t.Fatalf("rejected Applies sent commands: %q", got)
	}
	if err := d.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := f.takeCommands(); len(got) != 0 {
		t.Fatalf("empty Apply sent %q", got)
	}
}

func TestDriver_ErrorsNameServerAndBackend(t *testing.T) {
	f := newFake(t, map[string]fakeServer{"blue": {weight: 100}, "green": {}})
	ctx := context.Background()

	d := newDriver(t, Config{Socket: f.sock, Backend: "web", Servers: map[string]string{"blue": "blue", "green": "grn"}})
	for name, call := range map[string]func() error{
		"Weights": func() error { _, err := d.Weights(ctx); return err },
		"Apply":   func() error { return d.Apply(ctx, map[string]uint32{"green": 1}) },
		"Stats":   func() error { _, err := d.Stats(ctx); return err },
	} {
		err := call()
		if !errors.Is(err, ErrNoSuchServer) || !strings.Contains(err.Error(), "web/grn") || !strings.Contains(err.Error(), `"green"`) {
			t.Errorf("%s: err = %v, want ErrNoSuchServer naming web/grn and green", name, err)
		}
	}
	// SetState goes straight to HAProxy, which answers "No such server.".
	if err := d.SetState(ctx, "green", StateMaint); !errors.Is(err, ErrNoSuchServer) || !strings.Contains(err.Error(), "web/grn") {
		t.Errorf("SetState: err = %v, want ErrNoSuchServer naming web/grn", err)
	}

	d = newDriver(t, Config{Socket: f.sock, Backend: "api", Servers: map[string]string{"blue": "blue"}})
	if _, err := d.Weights(ctx); !errors.Is(err, ErrNoSuchBackend) || !strings.Contains(err.Error(), `"api"`) {
		t.Errorf("Weights: err = %v, want ErrNoSuchBackend naming api", err)
	}
	if _, err := d.Stats(ctx); !errors.Is(err, ErrNoSuchBackend) || !strings.Contains(err.Error(), `"api"`) {
		t.Errorf("Stats: err = %v, want ErrNoSuchBackend naming api", err)
	}

	d = newDriver(t, blueGreen(f.sock))
	f.mu.Lock()
	f.override = func(cmd string) (string, bool) {
		if strings.HasPrefix(cmd, "set weight") {
			return "Permission denied\n\n", true
		}
		return "", false
	}
	f.mu.Unlock()
	err := d.Apply(ctx, map[string]uint32{"green": 100})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "Permission denied") || !strings.Contains(err.Error(), "web/green") {
		t.Errorf("Apply: err = %v, want ErrRefused quoting HAProxy and naming web/green", err)
	}
	if err := d.SetState(ctx, "green", "up"); err == nil || !strings.Contains(err.Error(), `"up"`) {
		t.Errorf("SetState(up): err = %v, want one naming the bad state", err)
	}
	if err := d.SetState(ctx, "purple", StateMaint); !errors.Is(err, driver.ErrUnknownBackend) {
		t.Errorf("SetState(purple): err = %v, want ErrUnknownBackend", err)
	}
}

func TestDriver_Stats(t *testing.T) {
	f := newFake(t, map[string]fakeServer{"b1": {weight: 100}, "g1": {weight: 5, admin: adminForcedMaint}})
	d := newDriver(t, Config{Socket: f.sock, Backend: "web", Servers: map[string]string{"blue": "b1", "green": "g1"}})
	got, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []ServerStat{
		{Backend: "blue", Server: "b1", Status: "UP", Weight: 100, Scur: 1, Stot: 10, Hrsp2xx: 9},
		{Backend: "green", Server: "g1", Status: "MAINT", Weight: 5, Qcur: 1, Scur: 2, Stot: 20, Econ: 1, Eresp: 1, Wretr: 1, Wredis: 1, Hrsp2xx: 18, Hrsp5xx: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Stats =\n%+v\nwant\n%+v", got, want)
	}
	if cmds := f.takeCommands(); !reflect.DeepEqual(cmds, []string{"show stat web 4 -1"}) {
		t.Fatalf("sent %q", cmds)
	}
}

func TestDriver_UnavailableWithoutSocket(t *testing.T) {
	d := newDriver(t, blueGreen(filepath.Join(t.TempDir(), "missing.sock")))
	ctx := context.Background()
	if _, err := d.Weights(ctx); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Weights: err = %v, want ErrUnavailable", err)
	}
	if err := d.Apply(ctx, map[string]uint32{"blue": 1}); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Apply: err = %v, want ErrUnavailable", err)
	}
}

func TestDriver_HungHAProxy(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hung.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// Accept and never answer, like a wedged HAProxy.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})

	cfg := blueGreen(sock)
	cfg.Timeout = 50 * time.Millisecond
	d := newDriver(t, cfg)

	// Our own per-command timeout: HAProxy is not there for us.
	if _, err := d.Weights(context.Background()); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("timeout: err = %v, want ErrUnavailable", err)
	}

	// The caller's cancellation is reported as such.
	cfg.Timeout = time.Minute
	d = newDriver(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := d.Weights(ctx); errc <- err }()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || errors.Is(err, driver.ErrUnavailable) {
			t.Fatalf("cancel: err = %v, want context.Canceled only", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Weights did not return after cancel")
	}
}

func TestDriver_ClosedRefuses(t *testing.T) {
	f := newFake(t, map[string]fakeServer{"blue": {weight: 100}, "green": {}})
	d := newDriver(t, blueGreen(f.sock))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.Weights(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Weights after Close: err = %v", err)
	}
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 1}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Apply after Close: err = %v", err)
	}
	if got := f.takeCommands(); len(got) != 0 {
		t.Fatalf("closed driver sent %q", got)
	}
}

// TestServerStat_DownOnlyWhenHAProxyTookItOut: a server is down when
// HAProxy's own checks took it out of rotation, never for an admin state
// the agent or a drill set, nor while it is still up or unchecked.
func TestServerStat_DownOnlyWhenHAProxyTookItOut(t *testing.T) {
	for status, want := range map[string]bool{
		"DOWN": true, "DOWN 1/2": true, "DOWN (agent)": true,
		"UP": false, "UP 1/3": false, "no check": false, "NOLB": false,
		"MAINT": false, "MAINT (via)": false, "MAINT (resolution)": false, "DRAIN": false, "DRAIN (agent)": false,
	} {
		if got := (ServerStat{Status: status, Weight: 20}).Counters().Down; got != want {
			t.Errorf("status %q: down = %v, want %v", status, got, want)
		}
	}
}
