package agent

import (
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/switchyard/switchyard/agent/hooks"
	"github.com/switchyard/switchyard/internal/names"
)

func (h HookConfig) validate(field, name string) []error {
	var probs []error
	bad := func(f, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s: %s", f, fmt.Sprintf(format, args...)))
	}
	if err := names.Validate(name); err != nil {
		bad(field, "%v", err)
	}
	switch {
	case len(h.Command) == 0 || h.Command[0] == "":
		bad(field+".command", "required: the program and its arguments, e.g. [/usr/local/bin/warm-cache, --all]; no shell reads them")
	case filepath.IsAbs(h.Command[0]):
		if _, err := exec.LookPath(h.Command[0]); err != nil {
			bad(field+".command[0]", "%q is not an executable file: %v", h.Command[0], err)
		}
	default:
		if _, err := exec.LookPath(h.Command[0]); err != nil {
			bad(field+".command[0]", "%q is not found on PATH; give an absolute path", h.Command[0])
		}
	}
	if h.Timeout < time.Second || h.Timeout > MaxHookTimeout {
		bad(field+".timeout", "%s is out of range, want 1s..%s", h.Timeout, MaxHookTimeout)
	}
	return probs
}

// hookTable is the config's hooks as the runner takes them, each program
// named on PATH resolved now, as the config was checked: a later change of
// PATH, or a program of the same name put earlier on it, does not change
// what a hook runs.
func (c *Config) hookTable() map[string]hooks.Hook {
	out := make(map[string]hooks.Hook, len(c.Hooks))
	for name, h := range c.Hooks {
		cmd := append([]string(nil), h.Command...)
		if len(cmd) > 0 && !filepath.IsAbs(cmd[0]) {
			if p, err := exec.LookPath(cmd[0]); err == nil && filepath.IsAbs(p) {
				cmd[0] = p
			}
		}
		out[name] = hooks.Hook{Command: cmd, Timeout: h.Timeout}
	}
	return out
}

// hookRunner is a service's hook runner over the agent's journal: the
// state store's when it keeps one.
func (a *Agent) hookRunner(store StateStore, log *slog.Logger) *hooks.Runner {
	journal, ok := store.(hooks.Journal)
	if !ok {
		a.hookJournalOnce.Do(func() {
			log.Warn("the injected state store keeps no hook journal; a restart may run a hook again")
			a.memHooks = &hooks.MemJournal{}
		})
		journal = a.memHooks
	}
	return &hooks.Runner{
		Hooks:   a.cfg.hookTable(),
		Journal: journal,
		Log:     log,
		Now:     a.clock.Now,
		Runs:    func(point, outcome string) { a.m.hookRuns.WithLabelValues(point, outcome).Inc() },
	}
}
