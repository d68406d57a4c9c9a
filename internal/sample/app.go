package sample

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on an order, checked by the app tier.
const (
	MaxItemLen = 100
	MaxQty     = 10000
	// orderPrefix is where orders live in db. Order IDs start with the
	// creation time in fixed-width hex, so key order is creation order.
	orderPrefix = "order/"
)

// Order is one business record.
type Order struct {
	ID      string    `json:"id"`
	Item    string    `json:"item"`
	Qty     int       `json:"qty"`
	Created time.Time `json:"created"`
	// App names the task that created the order. DB, the db task that
	// stored it, is only known after the write: it is set in the reply to
	// POST /orders and not kept in the record.
	App string `json:"app"`
	DB  string `json:"db,omitempty"`
}

// OrderRequest is the body of POST /orders.
type OrderRequest struct {
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

// Validate checks an order request; the error names the field.
func (r OrderRequest) Validate() error {
	item := strings.TrimSpace(r.Item)
	switch {
	case item == "":
		return errors.New("item: must not be empty")
	case !utf8.ValidString(item):
		return errors.New("item: must be valid UTF-8")
	case utf8.RuneCountInString(item) > MaxItemLen:
		return fmt.Errorf("item: must be at most %d characters", MaxItemLen)
	case strings.IndexFunc(item, unicode.IsControl) >= 0:
		return errors.New("item: must not contain control characters")
	}
	if r.Qty < 1 || r.Qty > MaxQty {
		return fmt.Errorf("qty: must be between 1 and %d, got %d", MaxQty, r.Qty)
	}
	return nil
}

// Served names the task of each tier that took part in answering.
type Served struct {
	Web string `json:"web,omitempty"`
	App string `json:"app,omitempty"`
	DB  string `json:"db,omitempty"`
}

// OrderReply is the answer to POST /orders.
type OrderReply struct {
	Order    Order  `json:"order"`
	ServedBy Served `json:"servedBy"`
}

// OrderList is the answer to GET /orders: orders oldest first.
type OrderList struct {
	Orders []Order `json:"orders"`
	Count  int     `json:"count"`
	// Truncated is set when db had more orders than one LIST returns.
	Truncated bool   `json:"truncated,omitempty"`
	ServedBy  Served `json:"servedBy"`
}

// Health is the answer to GET /healthz.
type Health struct {
	Status string   `json:"status"`
	Self   Identity `json:"self"`
	// DB is the db task reached, or DBError why none was (only with
	// ?deep=1, so that liveness does not depend on db).
	DB      string `json:"db,omitempty"`
	DBError string `json:"dbError,omitempty"`
}

// App is the app tier: an HTTP/JSON order API backed by db.
type App struct {
	DB  Backend
	ID  Identity
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Handler returns the app's routes:
//
//	POST /orders   {"item": "...", "qty": n} -> 201 OrderReply
//	GET  /orders                             -> 200 OrderList
//	GET  /healthz[?deep=1]                   -> 200 Health (503 if deep and db is down)
//
// Errors are {"error": "..."} with 400 (bad input), 502 (db unreachable or
// failing) or 405/404.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", a.createOrder)
	mux.HandleFunc("GET /orders", a.listOrders)
	mux.HandleFunc("GET /healthz", a.health)
	return logRequests(a.logger(), mux)
}

func (a *App) logger() *slog.Logger {
	if a.Log == nil {
		return slog.Default()
	}
	return a.Log
}

// decodeOrder reads and checks a JSON OrderRequest; on error it has
// answered 400 already.
func decodeOrder(w http.ResponseWriter, r *http.Request) (OrderRequest, bool) {
	var req OrderRequest
	err := decodeJSON(w, r, &req)
	if err == nil {
		err = req.Validate()
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return req, false
	}
	return req, true
}

func (a *App) createOrder(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeOrder(w, r)
	if !ok {
		return
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	created := now().UTC()
	id, err := newOrderID(created)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	o := Order{ID: id, Item: strings.TrimSpace(req.Item), Qty: req.Qty, Created: created, App: a.ID.Task}
	// The stored record names the app but not the db: which db answered is
	// only known after the write, and is returned alongside.
	b, err := json.Marshal(o)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	server, err := a.DB.Set(ctx, orderPrefix+id, string(b))
	if err != nil {
		a.logger().Error("store order", "id", id, "err", err)
		writeError(w, http.StatusBadGateway, "storing the order in db failed: "+err.Error())
		return
	}
	o.DB = server
	a.logger().Info("order created", "id", id, "item", o.Item, "qty", o.Qty, "db", server)
	writeJSON(w, http.StatusCreated, OrderReply{Order: o, ServedBy: Served{App: a.ID.Task, DB: server}})
}

func (a *App) listOrders(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	entries, truncated, server, err := a.DB.List(ctx, orderPrefix)
	if err != nil {
		a.logger().Error("list orders", "err", err)
		writeError(w, http.StatusBadGateway, "listing orders from db failed: "+err.Error())
		return
	}
	out := OrderList{Orders: make([]Order, 0, len(entries)), Truncated: truncated, ServedBy: Served{App: a.ID.Task, DB: server}}
	for _, e := range entries {
		var o Order
		if err := json.Unmarshal([]byte(e.Value), &o); err != nil {
			// A record someone else wrote under our prefix: skip it rather
			// than fail the whole listing.
			a.logger().Warn("skipping unreadable order record", "key", e.Key, "err", err)
			continue
		}
		out.Orders = append(out.Orders, o)
	}
	out.Count = len(out.Orders)
	writeJSON(w, http.StatusOK, out)
}

func (a *App) health(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "ok", Self: a.ID}
	if r.URL.Query().Get("deep") == "1" {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		server, err := a.DB.Ping(ctx)
		if err != nil {
			h.Status, h.DBError = "degraded", err.Error()
			writeJSON(w, http.StatusServiceUnavailable, h)
			return
		}
		h.DB = server
	}
	writeJSON(w, http.StatusOK, h)
}

// newOrderID returns a unique, time-ordered ID: 16 hex digits of Unix
// nanoseconds then 8 random hex digits, so that IDs made by several app
// tasks at once neither collide nor need coordination.
func newOrderID(t time.Time) (string, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", fmt.Errorf("order id: %w", err)
	}
	return fmt.Sprintf("%016x%s", uint64(t.UnixNano()), hex.EncodeToString(rnd[:])), nil
}

// maxBody bounds JSON request bodies.
const maxBody = 64 << 10

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("body: content type %q is not application/json", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if dec.More() {
		return errors.New("body: more than one JSON value")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// statusRecorder remembers the status code for the access log.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func logRequests(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		lvl := slog.LevelDebug
		if rec.code >= 500 {
			lvl = slog.LevelWarn
		}
		log.Log(r.Context(), lvl, "http request", "method", r.Method, "path", r.URL.Path,
			"status", rec.code, "remote", r.RemoteAddr, "dur", time.Since(start))
	})
}
