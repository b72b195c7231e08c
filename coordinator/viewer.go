package coordinator

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/switchyard/switchyard/coordinator/web"
)

// viewerCookie carries the viewer token for a browser after it opened the
// dashboard once with ?token=.
const viewerCookie = "switchyard_viewer"

// minViewerToken is the shortest viewer token accepted.
const minViewerToken = 16

// loadViewerToken reads the viewer token file; empty path means reads need
// no token.
func loadViewerToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("coordinator: --viewer-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < minViewerToken || strings.ContainsAny(tok, " \t\r\n;,\"") {
		return "", fmt.Errorf("coordinator: --viewer-token-file %s: want one token of at least %d characters without spaces, quotes, commas or semicolons (e.g. openssl rand -hex 32)", path, minViewerToken)
	}
	return tok, nil
}

// errViewerToken is the refusal of a read without the viewer token.
var errViewerToken = errors.New("this coordinator's read API and dashboard need the viewer token " +
	"(Authorization: Bearer TOKEN, or open /ui/?token=TOKEN once in a browser) or a client certificate from the cluster CA")

// viewer lets a read through when no viewer token is configured, or when
// the request carries the token (bearer header or the dashboard's cookie)
// or a client certificate the cluster CA signed.
func (s *Server) viewer(h http.Handler) http.Handler {
	if s.viewerToken == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			h.ServeHTTP(w, r)
			return
		}
		tok := ""
		// The scheme is case-insensitive: "bearer TOKEN" is the same.
		if scheme, t, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			tok = strings.TrimSpace(t)
		} else if c, err := r.Cookie(viewerCookie); err == nil {
			tok = c.Value
		}
		switch {
		case tok == "":
			s.metrics.viewerRefused.WithLabelValues("missing").Inc()
			http.Error(w, errViewerToken.Error(), http.StatusUnauthorized)
		case subtle.ConstantTimeCompare([]byte(tok), []byte(s.viewerToken)) != 1:
			s.metrics.viewerRefused.WithLabelValues("wrong").Inc()
			s.log.Warn("refused a read: wrong viewer token", "from", r.RemoteAddr, "path", r.URL.Path)
			http.Error(w, "wrong viewer token: "+errViewerToken.Error(), http.StatusUnauthorized)
		default:
			h.ServeHTTP(w, r)
		}
	})
}

// dashboardRoutes serves the embedded dashboard under /ui/. With a viewer
// token, /ui/?token=TOKEN sets the cookie the dashboard's requests carry
// and redirects to /ui/, so the token leaves the address bar.
func (s *Server) dashboardRoutes(mux *http.ServeMux) {
	assets := s.viewer(http.StripPrefix("/ui/", web.Handler()))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusFound)
	})
	mux.HandleFunc("GET /ui/", func(w http.ResponseWriter, r *http.Request) {
		if tok := r.URL.Query().Get("token"); tok != "" && s.viewerToken != "" {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(s.viewerToken)) != 1 {
				s.metrics.viewerRefused.WithLabelValues("wrong").Inc()
				http.Error(w, "wrong viewer token: "+errViewerToken.Error(), http.StatusUnauthorized)
				return
			}
			http.SetCookie(w, &http.Cookie{Name: viewerCookie, Value: tok, Path: "/", HttpOnly: true,
				Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
			http.Redirect(w, r, "/ui/", http.StatusSeeOther)
			return
		}
		assets.ServeHTTP(w, r)
	})
}
