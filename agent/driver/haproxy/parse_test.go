package haproxy

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Captured from HAProxy 2.6.12 (Debian 12): blue drained at weight 0 after a
// switch, green (nothing listening) at 100 with failed connects.
func testdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const serversStateHeader = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"

func TestParse_ServersState(t *testing.T) {
	tests := []struct {
		name    string
		answer  string
		backend string
		want    map[string]serverState
		wantErr string
	}{
		{
			name:    "drain captured",
			answer:  testdata(t, "haproxy26-show-servers-state-drain.txt"),
			backend: "web",
			want: map[string]serverState{
				"blue":  {Weight: 0, Initial: 100, AdminState: adminForcedDrain, Addr: "127.0.0.1:9001"},
				"green": {Weight: 100, Initial: 0, Addr: "127.0.0.1:9002"},
			},
		},
		{
			name:    "maint captured",
			answer:  testdata(t, "haproxy26-show-servers-state-maint.txt"),
			backend: "web",
			want: map[string]serverState{
				"blue":  {Weight: 0, Initial: 100, AdminState: adminForcedMaint, Addr: "127.0.0.1:9001"},
				"green": {Weight: 100, Initial: 0, Addr: "127.0.0.1:9002"},
			},
		},
		{
			name: "other backends ignored",
			answer: "1\n" + serversStateHeader + "\n" +
				"3 web 1 blue 127.0.0.1 2 0 7 100 0 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n" +
				"4 api 1 blue 127.0.0.1 2 0 9 100 0 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n\n",
			backend: "web",
			want:    map[string]serverState{"blue": {Weight: 7, Initial: 100, Addr: "127.0.0.1:9001"}},
		},
		{
			name:    "no servers",
			answer:  "1\n" + serversStateHeader + "\n\n",
			backend: "web",
			want:    map[string]serverState{},
		},
		{name: "error answer", answer: "Can't find backend.\n\n", backend: "web", wantErr: "format version 1"},
		{name: "empty", answer: "", backend: "web", wantErr: "format version 1"},
		{name: "future version", answer: "2\n" + serversStateHeader + "\n", backend: "web", wantErr: "format version 1"},
		{name: "no header", answer: "1\n3 web 1 blue\n", backend: "web", wantErr: "header"},
		{name: "header lacks weight", answer: "1\n# be_name srv_name srv_admin_state\nweb blue 0\n", backend: "web", wantErr: "srv_uweight"},
		{
			name:    "short row",
			answer:  "1\n" + serversStateHeader + "\n3 web 1 blue\n",
			backend: "web", wantErr: "row 1 has 4 fields",
		},
		{
			// Counted against the header's columns, not its distinct
			// names: a row as long as the names must not reach past
			// its end.
			name:    "header repeats a column",
			answer:  "1\n# be_name srv_name be_name srv_admin_state srv_uweight srv_iweight\nweb blue 0 1 2\n",
			backend: "web", wantErr: "row 1 has 5 fields, header has 6",
		},
		{
			name:    "weight not a number",
			answer:  "1\n" + serversStateHeader + "\n3 web 1 blue 127.0.0.1 2 0 x 100 0 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n",
			backend: "web", wantErr: "server blue: srv_uweight",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseServersState(tt.answer, tt.backend)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParse_Stat(t *testing.T) {
	blue := ServerStat{Server: "blue", Status: "DRAIN", Weight: 0, Stot: 3, Hrsp2xx: 3}
	green := ServerStat{Server: "green", Status: "no check", Weight: 100, Stot: 8, Econ: 2, Wretr: 6}
	const header = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,hrsp_2xx,hrsp_4xx,hrsp_5xx,cli_abrt,srv_abrt,check_desc,\n"
	tests := []struct {
		name    string
		answer  string
		want    []statRow
		wantErr string
	}{
		{
			name:   "servers captured",
			answer: testdata(t, "haproxy26-show-stat-web.txt"),
			want:   []statRow{{Proxy: "web", Stat: blue}, {Proxy: "web", Stat: green}},
		},
		{
			name:   "all proxies captured",
			answer: testdata(t, "haproxy26-show-stat-all.txt"),
			want: []statRow{
				{Proxy: "fe", Stat: ServerStat{Server: "FRONTEND", Status: "OPEN", Stot: 5, Hrsp2xx: 3, Hrsp5xx: 2}},
				{Proxy: "web", Stat: blue},
				{Proxy: "web", Stat: green},
				{Proxy: "web", Stat: ServerStat{Server: "BACKEND", Status: "UP", Weight: 100, Stot: 5, Hrsp2xx: 3, Hrsp5xx: 2, Econ: 2, Wretr: 6}},
			},
		},
		{
			name: "quoted field with comma, short row",
			answer: header +
				"web,blue,1,2,3,4,,5,0,0,,0,,6,7,8,9,UP,100,1,0,10,11,12,13,14,\"L7OK, \"\"fine\"\"\",\n" +
				"web,green,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT\n",
			want: []statRow{
				{Proxy: "web", Stat: ServerStat{Server: "blue", Status: "UP", Weight: 100, Qcur: 1, Scur: 3, Stot: 5,
					Econ: 6, Eresp: 7, Wretr: 8, Wredis: 9, Hrsp2xx: 10, Hrsp4xx: 11, Hrsp5xx: 12, CliAbrt: 13, SrvAbrt: 14}},
				{Proxy: "web", Stat: ServerStat{Server: "green", Status: "MAINT"}},
			},
		},
		{name: "header only", answer: header + "\n", want: nil},
		{name: "error answer", answer: "No such proxy.\n\n", wantErr: "CSV header"},
		{name: "empty", answer: "", wantErr: "CSV header"},
		{name: "missing column", answer: "# pxname,svname,status\nweb,blue,UP\n", wantErr: `lacks column "weight"`},
		{name: "negative counter", answer: header + "web,blue,0,0,-1,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,0,0,0,,\n", wantErr: "web/blue): scur"},
		{name: "weight overflow", answer: header + "web,blue,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,99999999999,1,0,0,0,0,0,0,,\n", wantErr: "web/blue): weight"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat(tt.answer)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// A fuzzed answer may be rejected but must never panic, and what parses
// must be internally consistent.
func FuzzParseStat(f *testing.F) {
	f.Add("# pxname,svname,status,weight,scur,qcur,stot,hrsp_2xx,hrsp_4xx,hrsp_5xx,eresp,econ,wretr,wredis,cli_abrt,srv_abrt,\nweb,blue,UP,100,0,0,1,1,0,0,0,0,0,0,0,0,\n")
	f.Add("No such proxy.\n")
	f.Fuzz(func(t *testing.T, answer string) {
		rows, err := parseStat(answer)
		if err != nil && rows != nil {
			t.Fatalf("rows %v returned with error %v", rows, err)
		}
		for _, r := range rows {
			if r.Stat.Backend != "" {
				t.Fatalf("parser invented a spec backend name %q", r.Stat.Backend)
			}
		}
	})
}

func FuzzParseServersState(f *testing.F) {
	f.Add("1\n"+serversStateHeader+"\n3 web 1 blue 127.0.0.1 2 0 7 100 0 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n", "web")
	f.Add("1\n# be_name srv_name srv_admin_state srv_uweight srv_iweight\nweb blue 0 1 1\n", "web")
	f.Fuzz(func(t *testing.T, answer, backend string) {
		got, err := parseServersState(answer, backend)
		if err != nil && got != nil {
			t.Fatalf("state %v returned with error %v", got, err)
		}
		for name := range got {
			if name == "" || strings.ContainsAny(name, " \t\n") {
				t.Fatalf("server name %q cannot come from a whitespace-separated row", name)
			}
		}
	})
}

func TestParseInfoCounter(t *testing.T) {
	const info = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 7\nDroppedLogs: 305\nBusyPolling: 0\n"
	if v, err := parseInfoCounter(info, "DroppedLogs"); err != nil || v != 305 {
		t.Fatalf("DroppedLogs = %d, %v; want 305", v, err)
	}
	if _, err := parseInfoCounter(info, "Missing"); err == nil || !strings.Contains(err.Error(), "no Missing line") {
		t.Fatalf("missing field: err = %v", err)
	}
	if _, err := parseInfoCounter("DroppedLogs: lots\n", "DroppedLogs"); err == nil || !strings.Contains(err.Error(), `" lots" is not a counter`) {
		t.Fatalf("bad value: err = %v", err)
	}
}
