package sample

import (
	"context"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// recentOrders is how many orders the page and the summary show.
const recentOrders = 20

// Summary is the answer to GET /api/summary: what web saw through app and
// db, and which task of each tier answered.
type Summary struct {
	ServedBy   Served  `json:"servedBy"`
	OrderCount int     `json:"orderCount"`
	Recent     []Order `json:"recent"` // newest first, at most 20
}

// Web is the web tier: an HTML page and a small JSON API that call app.
type Web struct {
	Apps *AppClient
	ID   Identity
	Log  *slog.Logger
}

// Handler returns the web's routes:
//
//	GET  /              HTML page: recent orders, who served them, a form
//	POST /order         form post (item, qty) -> 303 to /
//	GET  /api/summary   Summary as JSON
//	POST /api/orders    {"item", "qty"} -> 201 OrderReply (servedBy.web set)
//	GET  /healthz       {"status": "ok", "self": ...}
func (wb *Web) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", wb.page)
	mux.HandleFunc("POST /order", wb.formOrder)
	mux.HandleFunc("GET /api/summary", wb.summary)
	mux.HandleFunc("POST /api/orders", wb.apiOrder)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, Health{Status: "ok", Self: wb.ID})
	})
	return logRequests(wb.logger(), mux)
}

func (wb *Web) logger() *slog.Logger {
	if wb.Log == nil {
		return slog.Default()
	}
	return wb.Log
}

// Summarize asks app for the orders and condenses them.
func (wb *Web) Summarize(ctx context.Context) (Summary, error) {
	list, err := wb.Apps.ListOrders(ctx)
	if err != nil {
		return Summary{}, err
	}
	s := Summary{ServedBy: list.ServedBy, OrderCount: list.Count, Recent: make([]Order, 0, recentOrders)}
	s.ServedBy.Web = wb.ID.Task
	for i := len(list.Orders) - 1; i >= 0 && len(s.Recent) < recentOrders; i-- {
		s.Recent = append(s.Recent, list.Orders[i])
	}
	return s, nil
}

func (wb *Web) summary(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	s, err := wb.Summarize(ctx)
	if err != nil {
		code, msg := appFailure(err)
		writeError(w, code, msg)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (wb *Web) apiOrder(w http.ResponseWriter, r *http.Request) {
	// Checked here too so that bad input never travels the path to app.
	req, ok := decodeOrder(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	reply, err := wb.Apps.CreateOrder(ctx, req)
	if err != nil {
		code, msg := appFailure(err)
		writeError(w, code, msg)
		return
	}
	reply.ServedBy.Web = wb.ID.Task
	writeJSON(w, http.StatusCreated, reply)
}

func (wb *Web) formOrder(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		wb.render(w, r, http.StatusBadRequest, "form: "+err.Error(), "")
		return
	}
	req := OrderRequest{Item: r.PostForm.Get("item")}
	qty, err := strconv.Atoi(strings.TrimSpace(r.PostForm.Get("qty")))
	if err != nil {
		wb.render(w, r, http.StatusBadRequest, "qty: must be a whole number", "")
		return
	}
	req.Qty = qty
	if err := req.Validate(); err != nil {
		wb.render(w, r, http.StatusBadRequest, err.Error(), "")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	reply, err := wb.Apps.CreateOrder(ctx, req)
	if err != nil {
		code, msg := appFailure(err)
		wb.render(w, r, code, msg, "")
		return
	}
	http.Redirect(w, r, "/?created="+url.QueryEscape(reply.Order.ID), http.StatusSeeOther)
}

func (wb *Web) page(w http.ResponseWriter, r *http.Request) {
	wb.render(w, r, http.StatusOK, "", r.URL.Query().Get("created"))
}

// render draws the page. The orders are fetched anew on every view, so
// each view is itself a trip through web→app→db.
func (wb *Web) render(w http.ResponseWriter, r *http.Request, code int, problem, created string) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	data := pageData{Self: wb.ID, Problem: problem, Created: created}
	s, err := wb.Summarize(ctx)
	if err != nil {
		c, msg := appFailure(err)
		if code == http.StatusOK {
			code = c
		}
		if data.Problem == "" {
			data.Problem = msg
		}
		data.Summary = Summary{ServedBy: Served{Web: wb.ID.Task}}
	} else {
		data.Summary = s
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := pageTmpl.Execute(w, data); err != nil {
		wb.logger().Error("render page", "err", err)
	}
}

// appFailure maps an app client error to an HTTP status and message.
func appFailure(err error) (int, string) {
	var ae *AppError
	if errors.As(err, &ae) {
		if ae.Code/100 == 4 {
			return ae.Code, ae.Msg
		}
		return http.StatusBadGateway, "app failed: " + ae.Msg
	}
	return http.StatusBadGateway, "app unreachable: " + err.Error()
}

type pageData struct {
	Self    Identity
	Summary Summary
	Problem string
	Created string
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Corridor sample shop</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}
.path{display:flex;gap:.5rem;align-items:center;margin:1rem 0}
.tier{border:1px solid #888;border-radius:.4rem;padding:.4rem .8rem;background:#f4f7fb}
.tier b{display:block;font-size:.75rem;text-transform:uppercase;color:#567}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left}
.problem{background:#fde;border:1px solid #c88;padding:.5rem;border-radius:.3rem}
.new{background:#efe}
</style></head><body>
<h1>Corridor sample shop</h1>
<div class="path" id="served-by">
 <span class="tier" id="web"><b>web</b>{{.Summary.ServedBy.Web}}</span> &rarr;
 <span class="tier" id="app"><b>app</b>{{with .Summary.ServedBy.App}}{{.}}{{else}}unreached{{end}}</span> &rarr;
 <span class="tier" id="db"><b>db</b>{{with .Summary.ServedBy.DB}}{{.}}{{else}}unreached{{end}}</span>
</div>
{{with .Problem}}<p class="problem" id="problem">{{.}}</p>{{end}}
<form method="post" action="/order">
 <label>Item <input name="item" required maxlength="100"></label>
 <label>Qty <input name="qty" type="number" min="1" max="10000" value="1" required></label>
 <button type="submit">Place order</button>
</form>
<h2>Orders ({{.Summary.OrderCount}})</h2>
<table id="orders"><tr><th>ID</th><th>Item</th><th>Qty</th><th>Created</th><th>App task</th></tr>
{{$created := .Created}}{{range .Summary.Recent}}<tr{{if eq .ID $created}} class="new"{{end}}><td>{{.ID}}</td><td>{{.Item}}</td><td>{{.Qty}}</td><td>{{.Created.Format "2006-01-02 15:04:05Z07:00"}}</td><td>{{.App}}</td></tr>
{{else}}<tr><td colspan="5">no orders yet</td></tr>{{end}}
</table>
<p><small>This page is served by web task {{.Self.Task}}{{with .Self.Addr}} ({{.}}){{end}}; JSON at <a href="/api/summary">/api/summary</a>.</small></p>
</body></html>
`))
