// Package auth issues and revokes Switchyard's NATS identities with NATS's
// own decentralized auth: one operator, a system account, one Switchyard
// account whose scoped signing keys (one per role) sign every user.
package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/names"
)

// Sentinel errors.
var (
	// ErrExists is returned by Init when the directory already holds a setup.
	ErrExists = errors.New("auth directory already holds an operator")
	// ErrNoSetup is returned by Load when the directory holds none.
	ErrNoSetup = errors.New("auth directory holds no operator (run 'switchyard auth init')")
	// ErrUnknownName is returned by Revoke for a name never issued.
	ErrUnknownName = errors.New("no credentials were issued to this name")
	// ErrNameTaken is returned by Issue and IssueLeaf for a name an
	// identity of another role holds and that was not revoked: identities
	// of one name share their inboxes (_INBOX.<name>).
	ErrNameTaken = errors.New("the name is held by an identity of another role")
)

// Files of an auth directory. Seeds (*.nk) are secrets: the operator and
// account seeds stay with whoever administers the cluster; .creds files go
// to the one process they name.
const (
	operatorJWTFile = "operator.jwt"
	operatorSeed    = "operator.nk"
	systemJWTFile   = "system-account.jwt"
	systemSeed      = "system-account.nk"
	accountJWTFile  = "account.jwt"
	accountSeed     = "account.nk"
	signingDir      = "signing"
	issuedFile      = "issued.json"
	// SystemCredsFile is the system account's user, used to push account
	// updates (revocations) to running servers.
	SystemCredsFile = "system.creds"
	// ServerConfigFile is the NATS server configuration snippet.
	ServerConfigFile = "nats-server.conf"
	// CredsDir is where Issue writes .creds files by default.
	CredsDir = "creds"
)

// AccountName is the NATS account every Switchyard identity lives in.
const AccountName = "SWITCHYARD"

// Setup is an operator/account setup in a directory.
type Setup struct {
	dir      string
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair
	// OperatorJWT, SystemJWT and AccountJWT are the current claims.
	OperatorJWT, SystemJWT, AccountJWT string
}

// Issued records one identity handed out, so that it can be revoked by name.
type Issued struct {
	Name      string   `json:"name"`
	Role      bus.Role `json:"role"`
	PublicKey string   `json:"publicKey"`
	IssuedAt  int64    `json:"issuedAt"`
	RevokedAt int64    `json:"revokedAt,omitempty"`
	// Signer is the public key of the scoped signing key that signed it.
	// Empty in lists written by an earlier release, whose leaf identities
	// the account key signed without any permissions (UnlimitedLeaves).
	Signer string `json:"signer,omitempty"`
}

// Dir is the directory the setup lives in.
func (s *Setup) Dir() string { return s.dir }

// SystemAccount is the system account's public key.
func (s *Setup) SystemAccount() string { return mustPublic(s.system) }

// Account is the Switchyard account's public key.
func (s *Setup) Account() string { return mustPublic(s.account) }

func mustPublic(kp nkeys.KeyPair) string {
	pub, err := kp.PublicKey()
	if err != nil {
		panic(err) // a key pair made from a seed always has a public key
	}
	return pub
}

// Init creates a new operator, system account, Switchyard account with one
// scoped signing key per role, the system user's creds and the server
// configuration snippet in dir. It refuses a directory that has one already:
// replacing the operator would lock out every issued identity.
func Init(dir, operatorName string) (*Setup, error) {
	if _, err := os.Stat(filepath.Join(dir, operatorSeed)); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrExists, dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, signingDir), 0o700); err != nil {
		return nil, fmt.Errorf("auth directory: %w", err)
	}
	s := &Setup{dir: dir}
	var err error
	if s.operator, err = createKey(filepath.Join(dir, operatorSeed), nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if s.system, err = createKey(filepath.Join(dir, systemSeed), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if s.account, err = createKey(filepath.Join(dir, accountSeed), nkeys.CreateAccount); err != nil {
		return nil, err
	}

	oc := jwt.NewOperatorClaims(mustPublic(s.operator))
	oc.Name = operatorName
	oc.SystemAccount = s.SystemAccount()
	if s.OperatorJWT, err = oc.Encode(s.operator); err != nil {
		return nil, fmt.Errorf("sign operator: %w", err)
	}

	sc := jwt.NewAccountClaims(s.SystemAccount())
	sc.Name = "SYS"
	// The system account's default exports (server and account info).
	sc.Exports = jwt.Exports{
		&jwt.Export{Name: "account-monitoring-services", Subject: "$SYS.REQ.ACCOUNT.*.*", Type: jwt.Service, ResponseType: jwt.ResponseTypeStream, AccountTokenPosition: 4},
		&jwt.Export{Name: "account-monitoring-streams", Subject: "$SYS.ACCOUNT.*.>", Type: jwt.Stream, AccountTokenPosition: 3},
	}
	if s.SystemJWT, err = sc.Encode(s.operator); err != nil {
		return nil, fmt.Errorf("sign system account: %w", err)
	}

	ac := jwt.NewAccountClaims(s.Account())
	ac.Name = AccountName
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit}
	for _, role := range scopeRoles() {
		kp, err := createKey(filepath.Join(dir, signingDir, role+".nk"), nkeys.CreateAccount)
		if err != nil {
			return nil, err
		}
		scope, err := roleScope(role, kp)
		if err != nil {
			return nil, err
		}
		ac.SigningKeys.AddScopedSigner(scope)
	}
	if s.AccountJWT, err = ac.Encode(s.operator); err != nil {
		return nil, fmt.Errorf("sign account: %w", err)
	}
	for file, content := range map[string]string{
		operatorJWTFile: s.OperatorJWT, systemJWTFile: s.SystemJWT, accountJWTFile: s.AccountJWT,
	} {
		if err := writeFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	if err := s.writeSystemCreds(); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, ServerConfigFile), []byte(s.ServerConfig("jwt")), 0o644); err != nil {
		return nil, err
	}
	if err := s.saveIssued(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// scopeRoles names the account's scoped signing keys: one per role of the
// bus, and one for PoPs' leaf servers (RoleLeaf).
func scopeRoles() []string {
	out := make([]string, 0, len(bus.Roles)+1)
	for _, r := range bus.Roles {
		out = append(out, string(r))
	}
	return append(out, RoleLeaf)
}

// roleScope is the scoped signing key of role: what every identity of the
// role may do, as this release of Switchyard grants it (bus.RolePermissions,
// bus.LeafPermissions for RoleLeaf).
func roleScope(role string, kp nkeys.KeyPair) (*jwt.UserScope, error) {
	var perms bus.Permissions
	if role == RoleLeaf {
		perms = bus.LeafPermissions()
	} else {
		var err error
		if perms, err = bus.RolePermissions(bus.Role(role)); err != nil {
			return nil, err
		}
	}
	scope := jwt.NewUserScope()
	scope.Key = mustPublic(kp)
	scope.Role = role
	scope.Description = "Switchyard " + role + " identities"
	scope.Template.Pub.Allow = perms.Publish
	scope.Template.Sub.Allow = perms.Subscribe
	if perms.Responses {
		scope.Template.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	}
	return scope, nil
}

// Refresh brings the account's role templates to this release's
// permissions (an auth directory made by an earlier release may grant a
// role more, or less, than it now needs) and, when they changed, re-signs
// the account and saves it. The signing keys stay, so every identity
// issued keeps working, under the new templates once the account reaches
// the servers (Push). changed says whether anything was re-signed.
func (s *Setup) Refresh() (token string, changed bool, err error) {
	ac, err := jwt.DecodeAccountClaims(s.AccountJWT)
	if err != nil {
		return "", false, fmt.Errorf("read account: %w", err)
	}
	if changed, err = s.refreshScopes(ac); err != nil || !changed {
		return s.AccountJWT, false, err
	}
	token, err = s.saveAccount(ac)
	return token, err == nil, err
}

// refreshScopes sets every role's scope in ac to roleScope's, and says
// whether any differed.
func (s *Setup) refreshScopes(ac *jwt.AccountClaims) (bool, error) {
	changed := false
	for _, role := range scopeRoles() {
		path := filepath.Join(s.dir, signingDir, role+".nk")
		kp, err := readKey(path)
		if errors.Is(err, os.ErrNotExist) {
			// A role this release has and the directory's did not.
			kp, err = createKey(path, nkeys.CreateAccount)
		}
		if err != nil {
			return false, err
		}
		want, err := roleScope(role, kp)
		if err != nil {
			return false, err
		}
		// Compared as the account JWT carries them.
		have, _ := ac.SigningKeys.GetScope(want.Key)
		hb, _ := json.Marshal(have)
		wb, err := json.Marshal(want)
		if err != nil {
			return false, err
		}
		if bytes.Equal(hb, wb) {
			continue
		}
		ac.SigningKeys.AddScopedSigner(want)
		changed = true
	}
	return changed, nil
}

// saveAccount signs ac and writes it, with the server config that embeds
// it.
func (s *Setup) saveAccount(ac *jwt.AccountClaims) (string, error) {
	token, err := ac.Encode(s.operator)
	if err != nil {
		return "", fmt.Errorf("sign account: %w", err)
	}
	if err := writeFile(filepath.Join(s.dir, accountJWTFile), []byte(token), 0o644); err != nil {
		return "", err
	}
	s.AccountJWT = token
	if err := writeFile(filepath.Join(s.dir, ServerConfigFile), []byte(s.ServerConfig("jwt")), 0o644); err != nil {
		return "", err
	}
	return token, nil
}

// Load reads the setup in dir.
func Load(dir string) (*Setup, error) {
	if _, err := os.Stat(filepath.Join(dir, operatorSeed)); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNoSetup, dir)
	}
	s := &Setup{dir: dir}
	var err error
	if s.operator, err = readKey(filepath.Join(dir, operatorSeed)); err != nil {
		return nil, err
	}
	if s.system, err = readKey(filepath.Join(dir, systemSeed)); err != nil {
		return nil, err
	}
	if s.account, err = readKey(filepath.Join(dir, accountSeed)); err != nil {
		return nil, err
	}
	for file, dst := range map[string]*string{
		operatorJWTFile: &s.OperatorJWT, systemJWTFile: &s.SystemJWT, accountJWTFile: &s.AccountJWT,
	} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			return nil, fmt.Errorf("auth directory: %w", err)
		}
		*dst = strings.TrimSpace(string(b))
	}
	return s, nil
}

// LoadOrInit loads the setup in dir, creating it first if there is none.
func LoadOrInit(dir, operatorName string) (*Setup, error) {
	s, err := Load(dir)
	if errors.Is(err, ErrNoSetup) {
		return Init(dir, operatorName)
	}
	return s, err
}

// Issue creates a user of role called name, signed by the role's scoped
// signing key, and returns its .creds file content. The server learns of it
// from the signature alone: no reload.
func (s *Setup) Issue(role bus.Role, name string) ([]byte, error) {
	if err := names.Validate(name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if _, err := bus.RolePermissions(role); err != nil {
		return nil, fmt.Errorf("--role: %w", err)
	}
	return s.issueScoped(string(role), name)
}

// issueScoped creates a user called name signed by role's scoped signing
// key (a role of the bus, or RoleLeaf), records it and returns its .creds
// file content.
func (s *Setup) issueScoped(role, name string) ([]byte, error) {
	if err := s.nameFree(name, bus.Role(role)); err != nil {
		return nil, err
	}
	signer, err := readKey(filepath.Join(s.dir, signingDir, role+".nk"))
	if err != nil {
		return nil, err
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	seed, err := user.Seed()
	if err != nil {
		return nil, err
	}
	uc := jwt.NewUserClaims(mustPublic(user))
	uc.Name = name
	uc.IssuerAccount = s.Account()
	uc.SetScoped(true)
	uc.Tags.Add("role:" + role)
	token, err := uc.Encode(signer)
	if err != nil {
		return nil, fmt.Errorf("sign user %s: %w", name, err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return nil, err
	}
	issued, err := s.issued()
	if err != nil {
		return nil, err
	}
	issued = append(issued, Issued{Name: name, Role: bus.Role(role), PublicKey: claims.Subject, IssuedAt: claims.IssuedAt, Signer: mustPublic(signer)})
	if err := s.saveIssued(issued); err != nil {
		return nil, err
	}
	return jwt.FormatUserConfig(token, seed)
}

// Revoke revokes every identity issued to name and returns the re-signed
// account JWT, which must reach the servers (Push) to take effect there.
func (s *Setup) Revoke(name string, at time.Time) (string, error) {
	issued, err := s.issued()
	if err != nil {
		return "", err
	}
	ac, err := jwt.DecodeAccountClaims(s.AccountJWT)
	if err != nil {
		return "", fmt.Errorf("read account: %w", err)
	}
	found := false
	for i := range issued {
		if issued[i].Name != name {
			continue
		}
		found = true
		ac.RevokeAt(issued[i].PublicKey, at)
		if issued[i].RevokedAt == 0 {
			issued[i].RevokedAt = at.Unix()
		}
	}
	if !found {
		return "", fmt.Errorf("--name %q: %w", name, ErrUnknownName)
	}
	// Re-signed anyway: with this release's role templates too.
	if _, err := s.refreshScopes(ac); err != nil {
		return "", err
	}
	token, err := s.saveAccount(ac)
	if err != nil {
		return "", err
	}
	return token, s.saveIssued(issued)
}

// nameFree refuses name when an identity of another role than role holds
// it and was not revoked: permissions grant each identity the inboxes
// under its name, so the two would read each other's replies.
func (s *Setup) nameFree(name string, role bus.Role) error {
	issued, err := s.issued()
	if err != nil {
		return err
	}
	for _, i := range issued {
		if i.Name == name && i.Role != role && i.RevokedAt == 0 {
			return fmt.Errorf("--name %q: %w (%s, user %s); revoke it first or choose another name", name, ErrNameTaken, i.Role, i.PublicKey)
		}
	}
	return nil
}

// List returns every identity issued, oldest first.
func (s *Setup) List() ([]Issued, error) { return s.issued() }

// ServerConfig is the NATS server configuration for this setup: the
// operator, the system account, and the full NATS-based resolver storing
// account JWTs in resolverDir, preloaded with both accounts. A preload never
// replaces a newer JWT the resolver holds (one pushed with revocations), so
// the snippet stays valid after Revoke.
func (s *Setup) ServerConfig(resolverDir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Switchyard NATS authorization (switchyard auth init).\n")
	fmt.Fprintf(&b, "operator: %s\n", s.OperatorJWT)
	fmt.Fprintf(&b, "system_account: %s\n", s.SystemAccount())
	fmt.Fprintf(&b, "resolver: {\n  type: full\n  dir: %q\n  allow_delete: false\n  interval: \"2m\"\n  timeout: \"5s\"\n}\n", resolverDir)
	fmt.Fprintf(&b, "resolver_preload: {\n  %s: %s\n  %s: %s\n}\n", s.SystemAccount(), s.SystemJWT, s.Account(), s.AccountJWT)
	return b.String()
}

func (s *Setup) writeSystemCreds() error {
	user, err := nkeys.CreateUser()
	if err != nil {
		return err
	}
	seed, err := user.Seed()
	if err != nil {
		return err
	}
	uc := jwt.NewUserClaims(mustPublic(user))
	uc.Name = "switchyard-system"
	token, err := uc.Encode(s.system)
	if err != nil {
		return fmt.Errorf("sign system user: %w", err)
	}
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(s.dir, SystemCredsFile), creds, 0o600)
}

func (s *Setup) issued() ([]Issued, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, issuedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("auth directory: %w", err)
	}
	var out []Issued
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("auth directory: %s: %w", issuedFile, err)
	}
	return out, nil
}

func (s *Setup) saveIssued(list []Issued) error {
	if list == nil {
		list = []Issued{}
	}
	slices.SortStableFunc(list, func(a, b Issued) int { return int(a.IssuedAt - b.IssuedAt) })
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(s.dir, issuedFile), append(b, '\n'), 0o600)
}

func createKey(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	kp, err := create()
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	if err := writeFile(path, append(seed, '\n'), 0o600); err != nil {
		return nil, err
	}
	return kp, nil
}

func readKey(path string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth directory: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("auth directory: %s: %w", path, err)
	}
	return kp, nil
}

// writeFile replaces path atomically, so a crash never leaves half a key.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
