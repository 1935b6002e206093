package admin

import (
	"context"
	"time"

	"github.com/pgshield/pgshield/metrics"
)

// Source is everything the console reads and controls. The live one
// (NewSource) joins the proxy, the pool manager and the topology; the
// console itself only renders what Source returns.
type Source interface {
	Pools() []PoolRow
	Clients() []ClientRow
	Servers() []ServerRow
	Backends() []BackendRow
	Stats() []StatsRow
	Config() []ConfigRow // in a stable order
	Version() string
	Queries(n int) []metrics.QueryStat
	SlowQueries() []metrics.SlowQuery
	SlowThreshold() time.Duration
	Transactions() []TransactionRow
	Pinned() []PinnedRow
	Alerts() []metrics.Alert

	// Databases lists the configured databases, in name order;
	// DatabaseQuery runs a read-only statistics query on the primary of
	// one of them.
	Databases() []string
	DatabaseQuery(ctx context.Context, database, sql string) (Result, error)

	// Policy lists the rules of the policy in force, with the rows each
	// table's rules judged and the refusals of each rule since the policy
	// was loaded (SHOW POLICY); Firewall lists the firewall of each
	// service with the fingerprints it allows or learned (SHOW FIREWALL).
	// Both are empty without a policy.
	Policy() []PolicyRow
	Firewall() []FirewallRow
	// FirewallSave writes the fingerprints service learned (""
	// every service in mode learn) to its allow_file (FIREWALL SAVE).
	FirewallSave(service string) ([]SavedAllowList, error)

	// Column encryption (keys.go, reencrypt.go). Keys lists the keys of
	// the keyring in force with the rows under each as of the last scan
	// of the encrypted columns, scanning them first when that scan is
	// older than maxAge (SHOW KEYS; no keys without encryption).
	// RotateKey adds a new primary key of each kind, saves the keyring
	// file and puts it in force, then retires the older keys no row uses
	// (ROTATE KEY). RetireKey retires one key no row uses (RETIRE KEY).
	// Reencrypt checks a table named as REENCRYPT takes it (table or
	// database.table) and returns the job that re-encrypts it;
	// Unfinished lists the re-encryptions the databases record as not
	// finished, as jobs to resume. Without encryption the last four
	// answer 55000.
	Keys(ctx context.Context, maxAge time.Duration) (KeysReport, error)
	RotateKey(ctx context.Context) (RotateReport, error)
	RetireKey(ctx context.Context, id uint32) (RetireReport, error)
	Reencrypt(ctx context.Context, table string) (ReencryptJob, error)
	Unfinished(ctx context.Context) ([]ReencryptJob, error)

	// Backups are the backups of the backup: section (backupcmds.go):
	// the manager, the jobs over it and their schedule; nil without a
	// backup repository (the backup commands answer 55000).
	Backups() *Backups

	// Control. database "" means every database; Reset of "" drops
	// every SET.
	Pause(ctx context.Context, database string) error
	Resume(database string) error
	Reload() error
	Kill(clientID uint32) error
	Set(name, value string) error
	Reset(name string) error
	Readmit(database, backend string) error
}

// ConfigRow is one setting of SHOW CONFIG.
type ConfigRow struct {
	Key, Value string
	// Source is "set" when the value comes from a console SET (it stays
	// over every RELOAD until RESET), "" otherwise.
	Source string
}

// PoolRow is one pool: clients and servers of a (service, database,
// backend).
type PoolRow struct {
	Service, Database, Backend, Mode string
	ClientsActive                    int // attached to a server of this pool
	ClientsIdle                      int // connected, no server
	ClientsWaiting                   int // waiting for a server
	ServersActive                    int
	ServersIdle                      int
	ServersOpening                   int
	Max, Min                         int
	WaitP50, WaitP95, WaitP99        time.Duration // time clients waited for a server
	Acquires, WaitTimeouts           int64
	Paused                           bool
}

// ClientRow is one connected client.
type ClientRow struct {
	ID                            uint32
	User, Database, Service, Mode string
	Remote, ApplicationName       string
	TLS                           bool
	State                         string // idle, active, idle in transaction, waiting
	Backend                       string // "" when no server is attached
	ServerPID                     uint32
	ConnectedAt                   time.Time
	TxStart                       time.Time // zero outside a transaction
	Queries, Transactions         int64
	BytesIn, BytesOut             int64  // from the client, to the client
	Pinned                        string // why the client is pinned, "" if not
}

// ServerRow is one open server connection.
type ServerRow struct {
	Service, Database, Backend string
	PID                        uint32
	State                      string // active, idle
	ClientID                   uint32 // 0 when idle
	ConnectedAt                time.Time
	IdleFor                    time.Duration
}

// BackendRow is one backend server as the topology sees it.
type BackendRow struct {
	Database, Backend, Role string // role: primary, replica, unknown
	InService               bool   // the primary writes go to
	Healthy, Fenced         bool
	Breaker                 string // closed, half-open, open
	LagBytes                uint64
	LagSeconds              float64
	LastCheck               time.Time
	LastError               string
	Clients                 int64 // clients reading from it now
}

// StatsRow is the traffic of one pool (service, database) since start.
type StatsRow struct {
	Service, Database string
	Queries           int64
	Transactions      int64
	Commits           int64
	Rollbacks         int64
	Errors            int64
	BytesIn           int64 // from clients
	BytesOut          int64 // to clients
	QueryTime         time.Duration
	AvgQuery          time.Duration
	AvgTransaction    time.Duration
}

// TransactionRow is one open transaction.
type TransactionRow struct {
	ClientID                         uint32
	User, Service, Database, Backend string
	Started                          time.Time
	Age                              time.Duration
	State                            string // active, idle in transaction, failed
	Isolation                        string // as set by BEGIN/SET TRANSACTION; "default" otherwise
	Statements                       int
	Tables                           []string // tables written so far
	Rows                             int64    // rows affected so far (CommandComplete tags)
	Long                             bool     // older than long_transaction_threshold
}

// PinnedRow is one client pinned to its server by session state.
type PinnedRow struct {
	ClientID                         uint32
	User, Service, Database, Backend string
	ServerPID                        uint32
	Reasons                          string // LISTEN, temporary object …
}

// PolicyRow is one rule of the policy in force.
type PolicyRow struct {
	Database, Table string
	Column          string // "" for a row rule
	Rule            string // the constraint name its violations carry
	Kind            string // type, required, length, range, pattern, enum, cel, row, transition
	Services        string // the rule's scope; "" for every service
	Checks          int64  // rows of the table the rules judged since the policy was loaded
	Refusals        int64  // times the rule refused since then
}

// FirewallRow is one fingerprint of a service's firewall, or the service
// alone (Fingerprint "") when it has none.
type FirewallRow struct {
	Service, Mode string // mode: off, learn, enforce
	Fingerprint   string
	Source        string // learned, allowed; "" without a fingerprint
	Query         string // the normalized text (literals replaced by $n), "" when not known
	Rules         string // the service's deny rules, summarized; "" without any
}

// SavedAllowList is what FIREWALL SAVE wrote for one service.
type SavedAllowList struct {
	Service string
	Path    string
	Learned int // fingerprints learned since the policy was loaded
	Total   int // fingerprints the file lists now (with those it had)
}

// KeyRow is one row of SHOW KEYS: a key of the keyring, or (ID 0, Kind
// "plaintext") the values of encrypted columns that are not ciphertext,
// or values under a key the keyring does not have (Kind "unknown") or
// that are not well-formed (ID 0, Kind "invalid").
type KeyRow struct {
	ID               uint32    // none for plaintext and invalid
	Kind             string    // randomized, deterministic, plaintext, unknown, invalid
	Created          time.Time // zero for the rows that are not keys
	Primary, Enabled bool
	// Rows is the number of values under the key, over every encrypted
	// column of every database, as of the scan; Counted is false before
	// any scan.
	Rows    int64
	Counted bool
}

// KeysReport is SHOW KEYS: the keys, when their rows were counted, and
// what the scan could not count.
type KeysReport struct {
	Keys      []KeyRow
	ScannedAt time.Time // zero before any scan
	Notes     []string  // shown as NOTICEs
}

// KeyUse is a key and the values under it, as of a scan.
type KeyUse struct {
	ID     uint32
	Kind   string // randomized, deterministic
	Rows   int64
	Tables []string // database.table, the tables holding them, in name order
}

// RotateReport is what ROTATE KEY did.
type RotateReport struct {
	New     []KeyUse // the new primary keys (Rows 0)
	Retired []KeyUse // older keys no row used, retired
	Kept    []KeyUse // older keys beyond keep_keys kept because rows use them
	Notes   []string // why nothing was retired, when the scan failed
	// KeepKeys is how many of the newest enabled keys of each kind were
	// kept whatever their rows.
	KeepKeys int
}

// RetireReport is what RETIRE KEY did.
type RetireReport struct {
	Key     KeyUse
	Already bool // it was retired before: nothing changed
}

// ReencryptJob is a re-encryption ready to run as a job of kind
// "reencrypt" and target Database.Table.
type ReencryptJob struct {
	Database, Table string
	Run             JobFunc
}

// Target is the job's target, database.table.
func (j ReencryptJob) Target() string { return j.Database + "." + j.Table }
