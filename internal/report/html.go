package report

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// The HTML form: one self-contained file (inline CSS, no script that runs,
// no external asset) whose visible part is rendered from the signed
// report, and which carries the signed envelope itself, base64-encoded, in
// an inert <script type="application/octet-stream"> block.

const envelopeOpen = `<script type="application/octet-stream" id="corridor-signed-report">`
const envelopeClose = `</script>`

// HTML renders the signed report s as one HTML file. It is deterministic:
// the same envelope gives the same bytes, which is what VerifyFile relies
// on.
func HTML(s api.SignedReport) ([]byte, error) {
	var r Report
	if err := json.Unmarshal(s.Report, &r); err != nil {
		return nil, fmt.Errorf("report: decode: %w", err)
	}
	env, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = page.Execute(&b, struct {
		R   *Report
		Sig *api.ReportSignature
	}{&r, s.Signature})
	if err != nil {
		return nil, fmt.Errorf("report: render: %w", err)
	}
	// The envelope is written outside the template: base64 needs no
	// escaping, and the template's script-context escaping must not touch
	// it.
	b.WriteString(envelopeOpen)
	b.WriteString(base64.StdEncoding.EncodeToString(env))
	b.WriteString(envelopeClose + "\n</body>\n</html>\n")
	return b.Bytes(), nil
}

// VerifyFile checks a report file, HTML or JSON, against the CA
// certificate caPEM: the signature must verify, and the file must be
// exactly what the signed report renders to (so that no byte of it was
// edited). It returns the report.
func VerifyFile(data, caPEM []byte) (*Report, *api.ReportSignature, error) {
	var s api.SignedReport
	isHTML := !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))
	if isHTML {
		i := bytes.Index(data, []byte(envelopeOpen))
		if i < 0 {
			return nil, nil, errors.New("report: no signed report in the file (not a corridor report, or its signature block was removed)")
		}
		rest := data[i+len(envelopeOpen):]
		j := bytes.Index(rest, []byte(envelopeClose))
		if j < 0 {
			return nil, nil, errors.New("report: the signed report block is not closed")
		}
		env, err := base64.StdEncoding.DecodeString(string(rest[:j]))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: the signed report block is not base64: %v", ErrBadSignature, err)
		}
		if err := json.Unmarshal(env, &s); err != nil {
			return nil, nil, fmt.Errorf("%w: the signed report block does not decode: %v", ErrBadSignature, err)
		}
	} else if err := json.Unmarshal(data, &s); err != nil {
		return nil, nil, fmt.Errorf("report: not a signed report: %w", err)
	}
	r, err := VerifySigned(s, caPEM)
	if err != nil {
		return nil, nil, err
	}
	var want []byte
	if isHTML {
		want, err = HTML(s)
	} else {
		want, err = EncodeJSON(s)
	}
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(want, data) {
		at := 0
		for at < len(want) && at < len(data) && want[at] == data[at] {
			at++
		}
		return nil, nil, fmt.Errorf("%w: the signed report holds, but the file differs from what it renders to at byte %d (the file was edited outside the signed block)", ErrBadSignature, at)
	}
	return r, s.Signature, nil
}

var funcs = template.FuncMap{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"age": func(sec float64) string {
		if sec < 0 {
			return "-"
		}
		return (time.Duration(sec * float64(time.Second))).Round(time.Second).String()
	},
	"join": strings.Join,
	"verdictClass": func(v string) string {
		switch v {
		case "encrypted", "plain", "denied", "local":
			return v
		}
		return "other"
	},
	"checkMark": func(ok bool, observed string) string {
		switch {
		case observed == "incomplete":
			return "INCOMPLETE"
		case ok:
			return "ok"
		}
		return "MISMATCH"
	},
	"classes": func(r *Report) []string {
		var out []string
		for _, c := range r.Policy.Spec.Classes {
			out = append(out, c.Name)
		}
		return out
	},
	"cell": func(r *Report, from, to string) Cell {
		for _, c := range r.Matrix {
			if c.FromClass == from && c.ToClass == to {
				return c
			}
		}
		return Cell{FromClass: from, ToClass: to, Verdict: "denied"}
	},
}

var page = template.Must(template.New("report").Funcs(funcs).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Corridor evidence report: {{.R.App}}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1b1f24;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #d0d7de;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem}pre{background:#f6f8fa;padding:.6rem;overflow:auto}
.encrypted{background:#dff5e3}.plain{background:#fff4d6}.denied{background:#f1f1f1;color:#57606a}.local{background:#e8f0fe}
.ok{color:#116329}.bad{color:#b42318;font-weight:bold}.muted{color:#57606a}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}
</style>
</head>
<body>
<h1>Corridor evidence report: app {{.R.App}}</h1>
<p class="muted">{{.R.Format}} · generated {{time .R.GeneratedAt}} by control plane {{.R.Control.ID}} (corridor {{.R.Control.Version}}) at etcd revision {{.R.Control.Revision}} · events from {{time .R.Period.Since}} to {{time .R.Period.Until}}</p>

<h2>Signature</h2>
<dl>
<dt>Signed by</dt><dd>the control plane's CA, certificate <code>{{.Sig.CA}}</code></dd>
<dt>Algorithm</dt><dd>{{.Sig.Alg}}</dd>
<dt>Digest of the signed report</dt><dd><code>{{.Sig.Digest}}</code></dd>
<dt>Check</dt><dd><code>corridor report verify THIS_FILE --ca ca.crt</code> (offline: the CA certificate of the control plane is all it needs; an edit to any byte of this file fails the check)</dd>
</dl>

<h2>Policy as applied</h2>
<dl>
<dt>Revision</dt><dd>{{.R.Policy.Revision}}</dd>
<dt>Spec hash</dt><dd><code>{{.R.Policy.Hash}}</code></dd>
<dt>Network</dt><dd>{{.R.Policy.Network}}</dd>
<dt>Applied by</dt><dd>{{.R.Policy.UpdatedBy}} at {{time .R.Policy.UpdatedAt}}</dd>
{{- range .R.Policy.Notes}}
<dt>Note</dt><dd>{{.}}</dd>
{{- end}}
</dl>
<table><tr><th>from</th><th>to</th><th>protocol</th><th>ports</th><th>encrypt</th></tr>
{{- range .R.Policy.Spec.Rules}}
<tr><td>{{.From}}</td><td>{{.To}}</td><td>{{if .Protocol}}{{.Protocol}}{{else}}tcp{{end}}</td><td>{{range $i, $p := .Ports}}{{if $i}},{{end}}{{$p}}{{end}}</td><td>{{.Encrypt}}</td></tr>
{{- end}}
</table>
{{- if .R.Policy.Source}}
<details><summary>Source as applied</summary><pre>{{.R.Policy.Source}}</pre></details>
{{- end}}

<h2>Path matrix</h2>
<p class="muted">Rows open connections to columns.</p>
<table><tr><th>from \ to</th>{{range classes .R}}<th>{{.}}</th>{{end}}</tr>
{{- $r := .R}}
{{- range $from := classes .R}}
<tr><th>{{$from}}</th>{{range $to := classes $r}}{{$c := cell $r $from $to}}<td class="{{verdictClass $c.Verdict}}">{{$c.Verdict}}{{if $c.Ports}} {{$c.Ports}}{{end}}</td>{{end}}</tr>
{{- end}}
</table>

<h2>Where each task runs, and why</h2>
<table><tr><th>task</th><th>server</th><th>address</th><th>state</th><th>why this server</th><th>why not the others</th></tr>
{{- range .R.Tasks}}
<tr><td>{{.ID}}</td><td>{{.Server}}</td><td>{{.Address}}</td><td>{{.State}}</td><td>{{if .Kept}}kept where it ran; {{end}}{{.Reason}}</td><td>{{join .Rejected "; "}}</td></tr>
{{- end}}
</table>

<h2>Paths between tasks</h2>
<table><tr><th>from</th><th>to</th><th>servers</th><th>kind</th><th>ports</th><th>handshake age</th><th>bytes sent / received</th></tr>
{{- range .R.Paths}}
<tr><td>{{.From}}</td><td>{{.To}}</td><td>{{.FromServer}} → {{.ToServer}}</td><td class="{{verdictClass .Kind}}">{{.Kind}}</td><td>{{.Ports}}</td><td>{{age .HandshakeAge}}</td><td>{{if eq .Kind "encrypted"}}{{.TxBytes}} / {{.RxBytes}}{{else}}-{{end}}</td></tr>
{{- end}}
</table>

<h2>Last verify run</h2>
{{- with .R.Verify}}
<p>Run <code>{{.ID}}</code> stored {{time .Time}} by {{.By}}, probes from {{time .Started}} to {{time .Finished}}:
{{if .OK}}<span class="ok">every check matches the policy</span>{{else}}<span class="bad">not proven</span>{{end}}
({{.Passed}} match, {{.Failed}} mismatch, {{.Incomplete}} incomplete).</p>
<table><tr><th>from</th><th>to</th><th>port</th><th>expected</th><th>observed</th><th>result</th><th>marker on the underlay</th><th>WireGuard frames</th><th>time</th><th>detail</th></tr>
{{- range .Checks}}
<tr><td>{{.FromTask}}@{{.FromServer}}</td><td>{{if .ToTask}}{{.ToTask}}@{{.ToServer}}{{else}}outside {{.ToAddr}}{{end}}</td><td>{{.Protocol}}/{{.Port}}</td><td>{{.Expect}}</td><td>{{.Observed}}</td><td class="{{if .OK}}ok{{else}}bad{{end}}">{{checkMark .OK .Observed}}</td><td>{{if .MarkerSeen}}seen{{else}}not seen{{end}}</td><td>{{.WireGuardFrames}}</td><td>{{time .Time}}</td><td>{{.Detail}}</td></tr>
{{- end}}
</table>
{{- else}}
<p class="bad">No verify run is stored for this app: run <code>corridor verify {{.R.App}}</code>.</p>
{{- end}}

<h2>Keys</h2>
<table><tr><th>server</th><th>public key</th><th>generation (asked / reported)</th><th>since</th><th>age</th><th>rotations in the period</th></tr>
{{- range .R.Keys}}
<tr><td>{{.Server}}</td><td><code>{{.PublicKey}}</code></td><td>{{.Generation}} / {{.Reported}}</td><td>{{time .Since}}</td><td>{{if .Since.IsZero}}-{{else}}{{age .AgeSeconds}}{{end}}</td><td>{{range $i, $t := .Rotations}}{{if $i}}, {{end}}{{time $t}}{{end}}</td></tr>
{{- end}}
</table>

<h2>Events of the period</h2>
<table><tr><th>time</th><th>who</th><th>action</th><th>object</th><th>message</th></tr>
{{- range .R.Events}}
<tr><td>{{time .Time}}</td><td>{{.Who}}</td><td>{{.Action}}</td><td>{{.Object}}</td><td>{{.Message}}</td></tr>
{{- end}}
</table>

<h2>Versions</h2>
<table><tr><th>component</th><th>version</th><th>last seen</th></tr>
<tr><td>control plane {{.R.Control.ID}}</td><td>{{.R.Versions.Server}}</td><td>{{time .R.GeneratedAt}}</td></tr>
{{- range .R.Versions.Agents}}
<tr><td>agent {{.Server}}</td><td>{{if .Version}}{{.Version}}{{else}}not reported{{end}}</td><td>{{time .LastSeen}}</td></tr>
{{- end}}
</table>
`))
