// Package chaos is Switchyard's fault library: drill specs and their
// validation, which nodes a drill may touch, and the faults an agent
// injects on its own host, each with apply, revert and a time to live.
package chaos

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/names"
	"github.com/switchyard/switchyard/internal/strictyaml"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Version is the only drill spec version this build reads.
const Version = "v1"

// MaxDuration bounds a drill: a fault that outlives a working day is a
// mistake, not a drill.
const MaxDuration = 12 * time.Hour

// MaxFaultDelay bounds an HTTP fault's delay and a TCP fault's latency: a
// longer wait is an outage, which a blackhole injects honestly.
const MaxFaultDelay = time.Minute

// ErrInvalid is wrapped by every drill parse and validation error.
var ErrInvalid = strictyaml.ErrInvalid

type drillFile struct {
	Version       string            `yaml:"version"`
	Name          string            `yaml:"name"`
	Service       string            `yaml:"service"`
	Selector      map[string]string `yaml:"selector"`
	Percent       *float64          `yaml:"percent"`
	MaxNodes      int               `yaml:"maxNodes"`
	MaxPercent    float64           `yaml:"maxPercent"`
	StartAfter    time.Duration     `yaml:"startAfter"`
	Duration      time.Duration     `yaml:"duration"`
	KeepOnBreach  bool              `yaml:"keepOnBreach"`
	Rollout       string            `yaml:"rollout"`
	DetectWithin  time.Duration     `yaml:"detectWithin"`
	RecoverWithin time.Duration     `yaml:"recoverWithin"`
	Fault         faultFile         `yaml:"fault"`
}

type faultFile struct {
	HTTP *struct {
		Backend      string        `yaml:"backend"`
		ErrorPercent int           `yaml:"errorPercent"`
		Status       int           `yaml:"status"`
		Delay        time.Duration `yaml:"delay"`
		DelayPercent *int          `yaml:"delayPercent"`
	} `yaml:"http"`
	TCP *struct {
		Backend        string        `yaml:"backend"`
		Kind           string        `yaml:"kind"`
		Latency        time.Duration `yaml:"latency"`
		BytesPerSecond int64         `yaml:"bytesPerSecond"`
	} `yaml:"tcp"`
	BackendState *struct {
		Backend string `yaml:"backend"`
		State   string `yaml:"state"`
	} `yaml:"backendState"`
	Process *struct {
		Process string `yaml:"process"`
		Action  string `yaml:"action"`
	} `yaml:"process"`
	CPUBurn *struct {
		Cores int `yaml:"cores"`
	} `yaml:"cpuBurn"`
	BusDrop *struct{} `yaml:"busDrop"`
}

func dur(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// ParseDrill reads a YAML drill spec, refusing unknown fields, and validates
// it.
func ParseDrill(data []byte) (*sv1.DrillSpec, error) {
	var f drillFile
	if err := strictyaml.Decode(data, &f, "drill"); err != nil {
		return nil, err
	}
	if f.Version != Version {
		return nil, strictyaml.Errors{{Path: "drill.version", Problem: fmt.Sprintf("%q is not supported, want %q", f.Version, Version)}}
	}
	var errs strictyaml.Errors
	neg := func(path string, v int64) {
		if v < 0 {
			errs = append(errs, &strictyaml.FieldError{Path: path, Problem: fmt.Sprintf("%d is negative", v)})
		}
	}
	// u32 is a field stored in 32 bits: a larger number is refused, not
	// wrapped around into a small one that passes validation.
	u32 := func(path string, v int) uint32 {
		switch {
		case v < 0:
			neg(path, int64(v))
		case uint64(v) > math.MaxUint32:
			errs = append(errs, &strictyaml.FieldError{Path: path, Problem: fmt.Sprintf("%d is out of range, want at most %d", v, uint32(math.MaxUint32))})
		default:
			return uint32(v)
		}
		return 0
	}
	s := &sv1.DrillSpec{
		Name: f.Name, Service: f.Service, Selector: f.Selector, BasisPoints: 10000,
		// A cap rounds down: a maxPercent finer than a basis point must
		// not let the drill touch more than the operator wrote. The
		// epsilon keeps exact hundredths (57.01*100 is 5700.999...).
		MaxNodes: u32("drill.maxNodes", f.MaxNodes), MaxBasisPoints: uint32(math.Floor(f.MaxPercent*100 + 1e-6)),
		StartAfter: dur(f.StartAfter), Duration: dur(f.Duration), KeepOnBreach: f.KeepOnBreach,
		Rollout: f.Rollout, DetectWithin: dur(f.DetectWithin), RecoverWithin: dur(f.RecoverWithin),
		Fault: &sv1.Fault{},
	}
	if !(f.MaxPercent >= 0 && f.MaxPercent <= 100) || (f.MaxPercent > 0 && f.MaxPercent < 0.01) {
		errs = append(errs, &strictyaml.FieldError{Path: "drill.maxPercent", Problem: fmt.Sprintf("%v is out of range, want 0.01..100", f.MaxPercent)})
	}
	if f.Percent != nil {
		// A basis point is the smallest share a drill stores: a smaller
		// percent would round to 0 and be refused as "0".
		if !(*f.Percent >= 0.01 && *f.Percent <= 100) {
			errs = append(errs, &strictyaml.FieldError{Path: "drill.percent", Problem: fmt.Sprintf("%v is out of range, want 0.01..100", *f.Percent)})
		}
		s.BasisPoints = uint32(math.Round(*f.Percent * 100))
	}
	set := 0
	if h := f.Fault.HTTP; h != nil {
		set++
		var delayPercent uint32
		if h.DelayPercent != nil {
			// A spec stores no delayPercent as 0, which a delay turns
			// into 100: a 0 written out must not mean every request.
			if *h.DelayPercent == 0 && h.Delay != 0 {
				errs = append(errs, &strictyaml.FieldError{Path: "drill.fault.http.delayPercent", Problem: "0 delays nothing; want 1..100, or leave it out to delay every request"})
			}
			delayPercent = u32("drill.fault.http.delayPercent", *h.DelayPercent)
		}
		s.Fault.Kind = &sv1.Fault_Http{Http: &sv1.HTTPFault{Backend: h.Backend, ErrorPercent: u32("drill.fault.http.errorPercent", h.ErrorPercent),
			Status: u32("drill.fault.http.status", h.Status), Delay: dur(h.Delay), DelayPercent: delayPercent}}
	}
	if t := f.Fault.TCP; t != nil {
		set++
		neg("drill.fault.tcp.bytesPerSecond", t.BytesPerSecond)
		s.Fault.Kind = &sv1.Fault_Tcp{Tcp: &sv1.TCPFault{Backend: t.Backend, Kind: t.Kind, Latency: dur(t.Latency), BytesPerSecond: uint64(max(t.BytesPerSecond, 0))}}
	}
	if b := f.Fault.BackendState; b != nil {
		set++
		s.Fault.Kind = &sv1.Fault_BackendState{BackendState: &sv1.BackendStateFault{Backend: b.Backend, State: b.State}}
	}
	if p := f.Fault.Process; p != nil {
		set++
		s.Fault.Kind = &sv1.Fault_Process{Process: &sv1.ProcessFault{Process: p.Process, Action: p.Action}}
	}
	if c := f.Fault.CPUBurn; c != nil {
		set++
		s.Fault.Kind = &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: u32("drill.fault.cpuBurn.cores", c.Cores)}}
	}
	if f.Fault.BusDrop != nil {
		set++
		s.Fault.Kind = &sv1.Fault_BusDrop{BusDrop: &sv1.BusDropFault{}}
	}
	if set > 1 {
		errs = append(errs, &strictyaml.FieldError{Path: "drill.fault", Problem: "more than one fault; a drill injects one"})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	DefaultDrill(s)
	if err := ValidateDrill(s); err != nil {
		return nil, err
	}
	return s, nil
}

// DefaultDrill fills in optional fields in place, deterministically.
func DefaultDrill(s *sv1.DrillSpec) {
	if s.GetBasisPoints() == 0 {
		s.BasisPoints = 10000
	}
	if h := s.GetFault().GetHttp(); h != nil {
		if h.GetErrorPercent() > 0 && h.GetStatus() == 0 {
			h.Status = 503
		}
		if h.GetDelay() != nil && h.GetDelayPercent() == 0 {
			h.DelayPercent = 100
		}
	}
}

// ValidateDrill checks a drill spec however it arrived.
func ValidateDrill(s *sv1.DrillSpec) error {
	var errs strictyaml.Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &strictyaml.FieldError{Path: path, Problem: fmt.Sprintf(format, args...)})
	}
	name := func(path, v, what string) {
		if v == "" {
			add(path, "required: %s", what)
		} else if err := names.Validate(v); err != nil {
			add(path, "%s", strings.TrimPrefix(err.Error(), names.ErrInvalid.Error()+": "))
		}
	}
	name("drill.name", s.GetName(), "a name for this drill, unique among drills")
	name("drill.service", s.GetService(), "the service whose nodes the drill targets")
	if s.GetRollout() != "" {
		name("drill.rollout", s.GetRollout(), "")
	}
	if s.GetMaxNodes() == 0 {
		add("drill.maxNodes", "required: the most nodes the drill may touch (the blast-radius cap)")
	}
	if s.GetMaxBasisPoints() == 0 || s.GetMaxBasisPoints() > 10000 {
		add("drill.maxPercent", "required: the largest share of the service's live nodes the drill may touch, more than 0 and at most 100")
	}
	if s.GetBasisPoints() == 0 || s.GetBasisPoints() > 10000 {
		add("drill.percent", "%v is out of range, want more than 0 and at most 100", float64(s.GetBasisPoints())/100)
	}
	d := s.GetDuration().AsDuration()
	if s.GetDuration() == nil || d <= 0 || d > MaxDuration {
		add("drill.duration", "required: how long the fault lasts, more than 0 and at most %s", MaxDuration)
	}
	for path, v := range map[string]*durationpb.Duration{"drill.startAfter": s.GetStartAfter(), "drill.detectWithin": s.GetDetectWithin(), "drill.recoverWithin": s.GetRecoverWithin()} {
		if v != nil && (v.CheckValid() != nil || v.AsDuration() < 0) {
			add(path, "%v is not a duration of zero or more", v.AsDuration())
		}
	}
	for k, v := range s.GetSelector() {
		if k == "" || v == "" {
			add("drill.selector", "label %q=%q: keys and values must not be empty", k, v)
		}
	}
	switch f := s.GetFault().GetKind().(type) {
	case nil:
		add("drill.fault", "required: one of http, tcp, backendState, process, cpuBurn, busDrop")
	case *sv1.Fault_Http:
		name("drill.fault.http.backend", f.Http.GetBackend(), `the backend to fault, e.g. "green"`)
		if f.Http.GetErrorPercent() > 100 {
			add("drill.fault.http.errorPercent", "%d is out of range, want 0..100", f.Http.GetErrorPercent())
		}
		if f.Http.GetDelayPercent() > 100 {
			add("drill.fault.http.delayPercent", "%d is out of range, want 0..100", f.Http.GetDelayPercent())
		}
		if st := f.Http.GetStatus(); st != 0 && (st < 400 || st > 599) {
			add("drill.fault.http.status", "%d is not an error status, want 400..599", st)
		}
		if f.Http.GetErrorPercent() == 0 && f.Http.GetDelay() == nil {
			add("drill.fault.http", "injects nothing: set errorPercent, delay, or both")
		}
		if dl := f.Http.GetDelay(); dl != nil && (dl.AsDuration() <= 0 || dl.AsDuration() > MaxFaultDelay) {
			add("drill.fault.http.delay", "%v is out of range, want more than 0 and at most %v", dl.AsDuration(), MaxFaultDelay)
		}
	case *sv1.Fault_Tcp:
		name("drill.fault.tcp.backend", f.Tcp.GetBackend(), `the backend to fault, e.g. "green"`)
		switch f.Tcp.GetKind() {
		case "latency":
			if l := f.Tcp.GetLatency(); l == nil || l.AsDuration() <= 0 {
				add("drill.fault.tcp.latency", "required for kind latency: a delay more than 0")
			} else if l.AsDuration() > MaxFaultDelay {
				add("drill.fault.tcp.latency", "%v is out of range, want more than 0 and at most %v (for an unreachable backend use kind blackhole)", l.AsDuration(), MaxFaultDelay)
			}
		case "bandwidth":
			if f.Tcp.GetBytesPerSecond() == 0 {
				add("drill.fault.tcp.bytesPerSecond", "required for kind bandwidth: more than 0")
			}
		case "reset", "blackhole":
		default:
			add("drill.fault.tcp.kind", "%q: want latency, reset, blackhole or bandwidth", f.Tcp.GetKind())
		}
	case *sv1.Fault_BackendState:
		name("drill.fault.backendState.backend", f.BackendState.GetBackend(), `the backend to take down, e.g. "green"`)
		if st := f.BackendState.GetState(); st != "maint" && st != "drain" {
			add("drill.fault.backendState.state", "%q: want maint or drain", st)
		}
	case *sv1.Fault_Process:
		name("drill.fault.process.process", f.Process.GetProcess(), "a process named in the agents' config")
		if a := f.Process.GetAction(); a != "pause" && a != "kill" {
			add("drill.fault.process.action", "%q: want pause or kill", a)
		}
	case *sv1.Fault_CpuBurn:
		if c := f.CpuBurn.GetCores(); c == 0 || c > 64 {
			add("drill.fault.cpuBurn.cores", "%d is out of range, want 1..64", c)
		}
	case *sv1.Fault_BusDrop:
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// Node is a node as drill selection sees it.
type Node struct {
	ID     string
	Labels map[string]string
}

// Select returns the nodes a drill takes among the service's live nodes, in
// a stable order: those whose labels match the selector and whose stable
// hash of (drill, node) falls in the drill's share.
func Select(s *sv1.DrillSpec, live []Node) []string {
	var out []string
	for _, n := range live {
		if desired.Selects(s.GetSelector(), n.Labels) && desired.Bucket(s.GetName(), n.ID) < s.GetBasisPoints() {
			out = append(out, n.ID)
		}
	}
	slices.Sort(out)
	return out
}

// ErrBlastRadius is wrapped when a drill would touch more than its caps.
var ErrBlastRadius = errors.New("over the blast-radius cap")

// CheckCap refuses a selection larger than the drill's caps: at most
// MaxNodes nodes and MaxBasisPoints of the live nodes.
func CheckCap(s *sv1.DrillSpec, selected, live int) error {
	if selected == 0 {
		return fmt.Errorf("%w: drill %s selects no live node of %s", ErrInvalid, s.GetName(), s.GetService())
	}
	if uint32(selected) > s.GetMaxNodes() {
		return fmt.Errorf("%w: drill %s would touch %d nodes, more than drill.maxNodes %d", ErrBlastRadius, s.GetName(), selected, s.GetMaxNodes())
	}
	if live > 0 && uint64(selected)*10000 > uint64(s.GetMaxBasisPoints())*uint64(live) {
		return fmt.Errorf("%w: drill %s would touch %d of %d live nodes (%.1f%%), more than drill.maxPercent %g",
			ErrBlastRadius, s.GetName(), selected, live, 100*float64(selected)/float64(live), float64(s.GetMaxBasisPoints())/100)
	}
	return nil
}

// Targets reports whether node must inject the drill's fault: it is among
// the targets the leader chose, the document's own caps hold, and its labels
// match. An agent checks this itself, so a forged or buggy document cannot
// widen the blast radius.
func Targets(doc *sv1.DrillDocument, node string, labels map[string]string) bool {
	s := doc.GetSpec()
	if doc.GetAborted() || uint32(len(doc.GetTargets())) > s.GetMaxNodes() {
		return false
	}
	return slices.Contains(doc.GetTargets(), node) && desired.Selects(s.GetSelector(), labels)
}
