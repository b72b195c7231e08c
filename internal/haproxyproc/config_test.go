package haproxyproc

import (
	"errors"
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{
		Dir:          "/tmp/hp",
		FrontendAddr: "127.0.0.1:18080",
		Backend:      "web",
		Servers: []Server{
			{Name: "blue", Addr: "127.0.0.1:9001", Weight: 100},
			{Name: "green", Addr: "127.0.0.1:9002", Weight: 0},
		},
	}
}

func TestRender_Valid(t *testing.T) {
	text, err := Render(validConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"stats socket /tmp/hp/admin.sock mode 600 level admin expose-fd listeners\n",
		"mode http\n",
		"timeout connect ",
		"timeout client ",
		"timeout server ",
		"bind 127.0.0.1:18080\n",
		"default_backend web\n",
		"backend web\n",
		"balance roundrobin\n",
		"server blue 127.0.0.1:9001 weight 100\n",
		"server green 127.0.0.1:9002 weight 0\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("config lacks %q:\n%s", want, text)
		}
	}
	for _, absent := range []string{"log ", "log-format", "check"} {
		if strings.Contains(text, absent) {
			t.Errorf("config without LogSocket/HealthChecks has %q:\n%s", absent, text)
		}
	}
	if strings.Index(text, "server blue") > strings.Index(text, "server green") {
		t.Errorf("servers out of order:\n%s", text)
	}
}

func TestRender_LogAndChecks(t *testing.T) {
	c := validConfig()
	c.LogSocket = "/tmp/hp/log.sock"
	c.HealthChecks = true
	text, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"log /tmp/hp/log.sock len 4096 format raw local0 info\n",
		"log global\n",
		`log-format "` + LogFormat + `"` + "\n",
		"option httpchk GET /\n",
		"server blue 127.0.0.1:9001 weight 100 check\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("config lacks %q:\n%s", want, text)
		}
	}
	for _, field := range []string{"%ST", "%Tt", "%Tr", "%s", "%b"} {
		if !strings.Contains(LogFormat, field) {
			t.Errorf("LogFormat lacks %s", field)
		}
	}
}

func TestRender_Invalid(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // part of the error, naming the field
	}{
		{"no dir", func(c *Config) { c.Dir = "" }, "Config.Dir is required"},
		{"dir too long", func(c *Config) { c.Dir = "/tmp/" + strings.Repeat("d", 90) }, "Config.Dir"},
		{"dir with space", func(c *Config) { c.Dir = "/tmp/a b" }, "Config.Dir"},
		{"no frontend", func(c *Config) { c.FrontendAddr = "" }, "Config.FrontendAddr"},
		{"frontend no host", func(c *Config) { c.FrontendAddr = ":8080" }, "Config.FrontendAddr"},
		{"frontend bad port", func(c *Config) { c.FrontendAddr = "127.0.0.1:99999" }, "Config.FrontendAddr"},
		{"no backend", func(c *Config) { c.Backend = "" }, "Config.Backend"},
		{"backend injection", func(c *Config) { c.Backend = "web;shutdown" }, "Config.Backend"},
		{"no servers", func(c *Config) { c.Servers = nil }, "Config.Servers is empty"},
		{"server name space", func(c *Config) { c.Servers[1].Name = "gr een" }, "Config.Servers[1].Name"},
		{"server name twice", func(c *Config) { c.Servers[1].Name = "blue" }, "Config.Servers[1].Name \"blue\" is used twice"},
		{"server addr", func(c *Config) { c.Servers[0].Addr = "127.0.0.1" }, "Config.Servers[0].Addr"},
		{"weight high", func(c *Config) { c.Servers[0].Weight = 257 }, "Config.Servers[0].Weight 257"},
		{"weight negative", func(c *Config) { c.Servers[1].Weight = -1 }, "Config.Servers[1].Weight -1"},
		{"log relative", func(c *Config) { c.LogSocket = "log.sock" }, "Config.LogSocket"},
		{"log too long", func(c *Config) { c.LogSocket = "/" + strings.Repeat("l", 120) }, "Config.LogSocket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			c.Servers = append([]Server(nil), c.Servers...)
			tt.mutate(&c)
			_, err := Render(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Render error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestBinary_MissingNamesPackage(t *testing.T) {
	_, err := Binary("/nonexistent/haproxy")
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("err = %v, want ErrNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "apt-get install haproxy") {
		t.Fatalf("err = %v, want it to say what to install", err)
	}
}

func TestTailBuffer_KeepsTail(t *testing.T) {
	b := &tailBuffer{max: 8}
	b.Write([]byte("0123456"))
	b.Write([]byte("789abc"))
	if got := b.String(); got != "56789abc" {
		t.Fatalf("tail = %q, want %q", got, "56789abc")
	}
}
