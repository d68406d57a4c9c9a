package console

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// CookieName is the console's session cookie.
const CookieName = "corridor_console"

// sessionKey derives the MAC key of sessions from the admin token: a new
// token ends every session, and the cookie never carries the token.
func sessionKey(token string) []byte {
	k := sha256.Sum256([]byte("corridor console session v1\x00" + token))
	return k[:]
}

// sessionValue is "<expiry unix seconds>.<base64url HMAC-SHA256(expiry)>".
func sessionValue(token string, exp time.Time) string {
	e := strconv.FormatInt(exp.Unix(), 10)
	m := hmac.New(sha256.New, sessionKey(token))
	m.Write([]byte(e))
	return e + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkSession reports whether v is a session made with token that has
// not expired at now.
func checkSession(token, v string, now time.Time) bool {
	e, _, ok := strings.Cut(v, ".")
	if !ok || token == "" {
		return false
	}
	sec, err := strconv.ParseInt(e, 10, 64)
	if err != nil || !now.Before(time.Unix(sec, 0)) {
		return false
	}
	return hmac.Equal([]byte(v), []byte(sessionValue(token, time.Unix(sec, 0))))
}

func (c *Console) validSession(r *http.Request) bool {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return false
	}
	return checkSession(c.cfg.Token(), ck.Value, c.cfg.Now())
}

// authed lets a request through with a valid session cookie or, for
// scripts, the admin token as a bearer token.
func (c *Console) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c.validSession(r) {
			next(w, r)
			return
		}
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tokenEqual(strings.TrimSpace(tok), c.cfg.Token()) {
			next(w, r)
			return
		}
		writeJSON(w, http.StatusUnauthorized, api.Error{Error: "not logged in to the console, or the session expired: log in at " + Prefix + "login"})
	}
}

func tokenEqual(a, b string) bool {
	return b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

var loginTmpl = template.Must(template.ParseFS(assets, "assets/login.html"))

type loginData struct{ Error string }

func (c *Console) renderLogin(w http.ResponseWriter, code int, msg string) {
	secure(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = loginTmpl.Execute(w, loginData{Error: msg})
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if c.validSession(r) {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	c.renderLogin(w, http.StatusOK, "")
}

// sameOrigin refuses a form posted from another site (browsers send
// Origin on POST); SameSite=Strict already keeps the cookie off such
// requests, this keeps a forged logout or login off too.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return o == ""
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		c.renderLogin(w, http.StatusForbidden, "login refused: the form was posted from another site")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		c.renderLogin(w, http.StatusBadRequest, "could not read the form: "+err.Error())
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	if tok == "" {
		c.renderLogin(w, http.StatusUnauthorized, "enter the admin token (the file admin.token in the server's data directory; `corridor lab up` prints the token, `corridor server` the file's path)")
		return
	}
	want := c.cfg.Token()
	if !tokenEqual(tok, want) {
		c.log.Warn("console login refused: wrong admin token", "remote", r.RemoteAddr)
		c.renderLogin(w, http.StatusUnauthorized, "wrong admin token")
		return
	}
	exp := c.cfg.Now().Add(c.cfg.SessionTTL)
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: sessionValue(want, exp), Path: Prefix,
		Expires: exp, MaxAge: int(c.cfg.SessionTTL / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
	c.log.Info("console login", "remote", r.RemoteAddr)
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		c.renderLogin(w, http.StatusForbidden, "logout refused: the form was posted from another site")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: Prefix, MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
}
