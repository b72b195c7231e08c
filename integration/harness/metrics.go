package harness

import (
	"bufio"
	"strconv"
	"strings"
)

// MetricValue finds a sample in Prometheus text exposition: the first series
// called name whose labels include every pair of labels. ok is false when
// there is none; a counter that was never incremented may be absent, which
// callers treat as zero where that is what they mean.
func MetricValue(exposition, name string, labels map[string]string) (value float64, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		series, rest, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		metric, labelText, hasLabels := strings.Cut(series, "{")
		if hasLabels {
			// A label value may hold a space; re-cut after the closing brace.
			end := strings.LastIndex(line, "}")
			if end < 0 {
				continue
			}
			labelText = line[len(metric)+1 : end]
			rest = strings.TrimSpace(line[end+1:])
		}
		if metric != name || !labelsInclude(parseLabels(labelText), labels) {
			continue
		}
		valueText, _, _ := strings.Cut(rest, " ") // drop an optional timestamp
		v, err := strconv.ParseFloat(valueText, 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}

func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, "=\"")
		if !ok {
			break
		}
		// Values are escaped Go-style (\" \\ \n); find the unescaped quote.
		var v strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			c := rest[i]
			if c == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(rest[i])
				}
				continue
			}
			if c == '"' {
				break
			}
			v.WriteByte(c)
		}
		out[strings.TrimSpace(k)] = v.String()
		if i >= len(rest) {
			break
		}
		s = strings.TrimLeft(rest[i+1:], ", ")
	}
	return out
}

func labelsInclude(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
