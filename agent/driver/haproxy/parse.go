package haproxy

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// Admin state bits of "show servers state" (srv_admin_state, HAProxy's
// SRV_ADMF_*). Only the forced ones and the config's "disabled" can be
// cleared with "set server ... state ready"; inherited ones come from a
// tracked server.
const (
	adminForcedMaint = 0x01 // "set server ... state maint"
	adminConfigMaint = 0x04 // "disabled" in the config
	adminForcedDrain = 0x08 // "set server ... state drain"

	adminClearable = adminForcedMaint | adminConfigMaint | adminForcedDrain
)

// serverState is one row of "show servers state <backend>".
type serverState struct {
	Weight     uint32 // srv_uweight: the weight last set (config or runtime)
	Initial    uint32 // srv_iweight: the weight in the config
	AdminState uint32 // srv_admin_state bits
	// Addr is "srv_addr:srv_port", the address HAProxy connects to now;
	// empty when the answer lacks either column.
	Addr string
}

// effectiveWeight is the share of new requests the server competes for:
// every admin state bit means maintenance or drain, which takes none
// whatever the weight.
func (s serverState) effectiveWeight() uint32 {
	if s.AdminState != 0 {
		return 0
	}
	return s.Weight
}

// parseServersState parses HAProxy's answer to "show servers state
// [<backend>]" (format version 1: a version line, a "# " header naming the
// space-separated columns, one row per server) into the servers of backend,
// keyed by server name.
func parseServersState(answer, backend string) (map[string]serverState, error) {
	lines := strings.Split(strings.TrimSpace(answer), "\n")
	if len(lines) < 2 || strings.TrimSpace(lines[0]) != "1" {
		return nil, fmt.Errorf("show servers state: want format version 1 and a header, got %q", head(answer))
	}
	header := strings.TrimSpace(lines[1])
	if !strings.HasPrefix(header, "# ") {
		return nil, fmt.Errorf("show servers state: want a \"# \" header line, got %q", head(header))
	}
	names := strings.Fields(strings.TrimPrefix(header, "# "))
	col := columns(names)
	be, okBe := col["be_name"]
	srv, okSrv := col["srv_name"]
	admin, okAdmin := col["srv_admin_state"]
	uw, okUW := col["srv_uweight"]
	iw, okIW := col["srv_iweight"]
	if !okBe || !okSrv || !okAdmin || !okUW || !okIW {
		return nil, fmt.Errorf("show servers state: header lacks be_name, srv_name, srv_admin_state, srv_uweight or srv_iweight: %q", head(header))
	}
	addrCol, okAddr := col["srv_addr"]
	portCol, okPort := col["srv_port"]
	out := make(map[string]serverState)
	for i, line := range lines[2:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		// Against the header's columns, not its distinct names (col): a
		// repeated name would let a short row through to an index past it.
		if len(f) != len(names) {
			return nil, fmt.Errorf("show servers state: row %d has %d fields, header has %d: %q", i+1, len(f), len(names), head(line))
		}
		if f[be] != backend {
			continue
		}
		var st serverState
		var err error
		if st.Weight, err = parseUint32(f[uw]); err != nil {
			return nil, fmt.Errorf("show servers state: server %s: srv_uweight: %w", f[srv], err)
		}
		if st.Initial, err = parseUint32(f[iw]); err != nil {
			return nil, fmt.Errorf("show servers state: server %s: srv_iweight: %w", f[srv], err)
		}
		if st.AdminState, err = parseUint32(f[admin]); err != nil {
			return nil, fmt.Errorf("show servers state: server %s: srv_admin_state: %w", f[srv], err)
		}
		if okAddr && okPort {
			st.Addr = net.JoinHostPort(f[addrCol], f[portCol])
		}
		out[f[srv]] = st
	}
	return out, nil
}

// ServerStat is one server's counters and state from HAProxy's "show stat".
// Counters are cumulative since HAProxy started, so they drop to zero when
// it restarts.
type ServerStat struct {
	Backend string // backend name as in rollout specs ("blue")
	Server  string // HAProxy server name

	Status string // "UP", "DOWN", "MAINT", "DRAIN", "no check", "UP 1/3", ...
	Weight uint32 // effective weight HAProxy reports

	Scur    uint64 // current sessions
	Qcur    uint64 // requests queued, waiting for a connection slot
	Stot    uint64 // total sessions
	Hrsp2xx uint64 // HTTP responses by class
	Hrsp4xx uint64
	Hrsp5xx uint64
	// Hrsp1xx, Hrsp3xx and HrspOther complete the classes; they read 0
	// when the answer lacks their column.
	Hrsp1xx   uint64
	Hrsp3xx   uint64
	HrspOther uint64
	Eresp     uint64 // response errors (server aborted, bad response)
	Econ      uint64 // failed connection attempts
	Wretr     uint64 // connection retries
	Wredis    uint64 // requests redispatched to another server
	CliAbrt   uint64 // transfers aborted by the client
	SrvAbrt   uint64 // transfers aborted by the server
}

// statColumns are the "show stat" columns a ServerStat needs; HAProxy has
// kept them since 1.x.
var statColumns = []string{
	"pxname", "svname", "status", "weight", "scur", "qcur", "stot",
	"hrsp_2xx", "hrsp_4xx", "hrsp_5xx", "eresp", "econ", "wretr", "wredis",
	"cli_abrt", "srv_abrt",
}

// optionalStatColumns complete a ServerStat when present; a missing one
// reads as 0.
var optionalStatColumns = []string{"hrsp_1xx", "hrsp_3xx", "hrsp_other"}

// statRow is one "show stat" row with its proxy name.
type statRow struct {
	Proxy string
	Stat  ServerStat // Backend left empty: the parser knows no spec names
}

// parseStat parses HAProxy's "show stat" CSV: a header line starting with
// "# " naming the columns, then one row per proxy, server, FRONTEND or
// BACKEND. Empty counters (not applicable to the row's type) read as 0.
func parseStat(answer string) ([]statRow, error) {
	text := strings.TrimLeft(answer, "\n")
	if !strings.HasPrefix(text, "# ") {
		return nil, fmt.Errorf("show stat: want a \"# \" CSV header, got %q", head(text))
	}
	r := csv.NewReader(strings.NewReader(text[2:]))
	r.FieldsPerRecord = -1 // FRONTEND/BACKEND rows are as wide as the header, but be lenient
	r.LazyQuotes = true
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("show stat: header: %w", err)
	}
	col := columns(header)
	idx := make([]int, len(statColumns))
	for i, name := range statColumns {
		j, ok := col[name]
		if !ok {
			return nil, fmt.Errorf("show stat: header lacks column %q", name)
		}
		idx[i] = j
	}
	opt := make([]int, len(optionalStatColumns))
	for i, name := range optionalStatColumns {
		opt[i] = -1
		if j, ok := col[name]; ok {
			opt[i] = j
		}
	}
	var rows []statRow
	for n := 1; ; n++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("show stat: row %d: %w", n, err)
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		field := func(i int) string {
			if idx[i] < len(rec) {
				return rec[idx[i]]
			}
			return ""
		}
		row := statRow{Proxy: field(0)}
		s := &row.Stat
		s.Server = field(1)
		s.Status = field(2)
		if s.Weight, err = parseUint32(orZero(field(3))); err != nil {
			return nil, fmt.Errorf("show stat: row %d (%s/%s): weight: %w", n, row.Proxy, s.Server, err)
		}
		counters := []*uint64{&s.Scur, &s.Qcur, &s.Stot, &s.Hrsp2xx, &s.Hrsp4xx, &s.Hrsp5xx,
			&s.Eresp, &s.Econ, &s.Wretr, &s.Wredis, &s.CliAbrt, &s.SrvAbrt}
		for k, dst := range counters {
			v := orZero(field(4 + k))
			if *dst, err = strconv.ParseUint(v, 10, 64); err != nil {
				return nil, fmt.Errorf("show stat: row %d (%s/%s): %s: %q is not a counter", n, row.Proxy, s.Server, statColumns[4+k], head(v))
			}
		}
		for k, dst := range []*uint64{&s.Hrsp1xx, &s.Hrsp3xx, &s.HrspOther} {
			if opt[k] < 0 || opt[k] >= len(rec) {
				continue
			}
			v := orZero(rec[opt[k]])
			if *dst, err = strconv.ParseUint(v, 10, 64); err != nil {
				return nil, fmt.Errorf("show stat: row %d (%s/%s): %s: %q is not a counter", n, row.Proxy, s.Server, optionalStatColumns[k], head(v))
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// columns maps column names to their index; empty names (HAProxy ends the
// CSV header with a comma) are skipped.
func columns(names []string) map[string]int {
	m := make(map[string]int, len(names))
	for i, n := range names {
		n = strings.TrimSpace(n)
		if _, dup := m[n]; n != "" && !dup {
			m[n] = i
		}
	}
	return m
}

func orZero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}

func parseUint32(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number 0..%d", head(s), uint32(1<<32-1))
	}
	return uint32(v), nil
}

// head shortens what goes into an error message: HAProxy answers can be
// kilobytes long.
func head(s string) string {
	const n = 120
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// parseInfoCounter reads one "Name: value" counter of "show info".
func parseInfoCounter(answer, name string) (uint64, error) {
	for line := range strings.Lines(answer) {
		k, v, ok := strings.Cut(strings.TrimRight(line, "\r\n"), ":")
		if !ok || k != name {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("show info: %s: %q is not a counter", name, head(v))
		}
		return n, nil
	}
	return 0, fmt.Errorf("show info: no %s line in %q", name, head(answer))
}
