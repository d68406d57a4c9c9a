package spec

import (
	"strings"
	"testing"
)

// ledgerApp exports class api's port 7000 as service accounts.
const ledgerApp = `apiVersion: corridor/v1
kind: App
name: ledger
classes:
  - name: api
    tasks: 1
    guest: {runtime: netns, command: [corridor, sample, db]}
    resources: {cpu: 100m, memory: 64Mi}
  - name: admin
    tasks: 1
    guest: {runtime: netns, command: [corridor, sample, db]}
    resources: {cpu: 100m, memory: 64Mi}
exports:
  - name: accounts
    class: api
    ports: [7000]
`

// shopApp imports ledger/accounts and reaches it from class app.
const shopApp = `apiVersion: corridor/v1
kind: App
name: shop
classes:
  - name: web
    tasks: 1
    guest: {runtime: netns, command: [corridor, sample, web]}
    resources: {cpu: 100m, memory: 64Mi}
  - name: app
    tasks: 1
    guest: {runtime: netns, command: [corridor, sample, app]}
    resources: {cpu: 100m, memory: 64Mi}
imports:
  - service: ledger/accounts
rules:
  - from: web
    to: app
    ports: [8080]
    encrypt: false
  - from: app
    to: accounts
    ports: [7000]
    encrypt: true
`

// lineOf is the 1-based line of the only line of s holding sub.
func lineOf(t *testing.T, s, sub string) int {
	t.Helper()
	line := 0
	for i, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			if line != 0 {
				t.Fatalf("lineOf: %q is on lines %d and %d", sub, line, i+1)
			}
			line = i + 1
		}
	}
	if line == 0 {
		t.Fatalf("lineOf: %q not found", sub)
	}
	return line
}

func TestServicesDecode(t *testing.T) {
	apps, err := DecodeApps("both.yaml", []byte(ledgerApp+"---\n"+shopApp))
	if err != nil {
		t.Fatal(err)
	}
	l, s := apps[0], apps[1]
	if e := l.Export("accounts"); e == nil || e.Class != "api" || e.Protocol != ProtoTCP || len(e.Ports) != 1 {
		t.Fatalf("export: %+v", l.Exports)
	}
	if im := s.ImportOf("accounts"); im == nil || im.As != "accounts" || im.Service != "ledger/accounts" {
		t.Fatalf("import (as defaults to the service's name): %+v", s.Imports)
	}
	if errs := CheckImports(&s, apps); len(errs) > 0 {
		t.Fatalf("resolved import refused: %v", errs)
	}
	// One at a time, as the server gets them: the importer alone decodes
	// (its exporter is not in the file), and is checked against the store.
	if _, err := DecodeApps("shop.yaml", []byte(shopApp)); err != nil {
		t.Fatalf("an import of an app in no file of the stream is left to CheckImports: %v", err)
	}
}

// Every refused case of app to app names file, line, column and field.
func TestServicesErrors(t *testing.T) {
	cases := []struct {
		name      string
		ledger    func(string) string
		shop      func(string) string
		field     string
		lineOf    string // a substring of the line of the error, in the shop part unless ledgerLine
		ledgerErr bool
		msg       string
		delta     int // the error is delta lines after lineOf's
		n         int // errors in the stream of both apps, when not 1 (follow-ups)
	}{
		{name: "service not exported", ledger: func(s string) string { return strings.Replace(s, "name: accounts", "name: books", 1) },
			field: "imports[0].service", lineOf: "service: ledger/accounts", msg: `does not export a service "accounts" (it exports: books)`},
		{name: "nothing exported", ledger: func(s string) string { return s[:strings.Index(s, "exports:")] },
			field: "imports[0].service", lineOf: "service: ledger/accounts", msg: "it exports nothing"},
		{name: "port not exported", shop: func(s string) string { return strings.Replace(s, "ports: [7000]", "ports: [7000, 7001]", 1) },
			field: "rules[1].ports[1]", lineOf: "ports: [7000, 7001]", msg: "port 7001 is not exported by service ledger/accounts (it exports tcp/7000)"},
		{name: "protocol not exported", shop: func(s string) string {
			return strings.Replace(s, "ports: [7000]", "ports: [7000]\n    protocol: udp", 1)
		}, field: "rules[1].protocol", lineOf: "protocol: udp", msg: "exported on tcp, not udp"},
		{name: "import as from", shop: func(s string) string {
			return strings.Replace(s, "- from: app\n    to: accounts", "- from: accounts\n    to: app", 1)
		},
			field: "rules[1].from", lineOf: "from: accounts", msg: "imported service: it only accepts connections"},
		{name: "alias is a class", shop: func(s string) string {
			return strings.Replace(s, "- service: ledger/accounts", "- service: ledger/accounts\n    as: web", 1)
		}, field: "imports[0].as", lineOf: "as: web", msg: `"web" is also a class of this app`, n: 2},
		{name: "own service", shop: func(s string) string { return strings.Replace(s, "ledger/accounts", "shop/accounts", 1) },
			field: "imports[0].service", lineOf: "service: shop/accounts", msg: "this app's own"},
		{name: "bad service", shop: func(s string) string { return strings.Replace(s, "ledger/accounts", "ledger", 1) },
			field: "imports[0].service", lineOf: "service: ledger", msg: "is not <app>/<service>", n: 2},
		{name: "rule to unknown", shop: func(s string) string { return strings.Replace(s, "to: accounts", "to: acounts", 1) },
			field: "rules[1].to", lineOf: "to: acounts", msg: `not defined in this app (classes: app, web) nor imported (imports: accounts)`},
		{name: "imported twice", shop: func(s string) string {
			return strings.Replace(s, "- service: ledger/accounts", "- service: ledger/accounts\n  - service: ledger/accounts\n    as: books", 1)
		}, field: "imports[1].service", lineOf: "as: books", delta: -1, msg: "already imported by imports[0]"},
		{name: "export of unknown class", ledger: func(s string) string { return strings.Replace(s, "class: api", "class: apu", 1) },
			field: "exports[0].class", lineOf: "class: apu", ledgerErr: true, msg: `class "apu" is not defined`},
		{name: "export without ports", ledger: func(s string) string { return strings.Replace(s, "ports: [7000]", "ports: []", 1) },
			field: "exports[0].ports", lineOf: "ports: []", ledgerErr: true, msg: "at least one port", n: 2},
		{name: "encrypt both ways differs", ledger: func(s string) string {
			return s + "imports:\n  - service: shop/front\nrules:\n  - {from: api, to: front, ports: [9000], encrypt: false}\n"
		}, shop: func(s string) string {
			return strings.Replace(s, "imports:", "exports:\n  - {name: front, class: app, ports: [9000]}\nimports:", 1)
		}, field: "rules[1].encrypt", lineOf: "encrypt: true", msg: "conflicts with encrypt: false of app ledger's rule from api to front", n: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ledger, shop := ledgerApp, shopApp
			if c.ledger != nil {
				ledger = c.ledger(ledger)
			}
			if c.shop != nil {
				shop = c.shop(shop)
			}
			text := ledger + "---\n" + shop
			offset := 0
			if !c.ledgerErr {
				offset = strings.Count(ledger, "\n") + 1
			}
			part := shop
			if c.ledgerErr {
				part = ledger
			}
			line := lineOf(t, part, c.lineOf) + c.delta
			// In one stream: DecodeApps resolves the imports itself.
			_, err := DecodeApps("both.yaml", []byte(text))
			if c.n > 1 {
				// The follow-ups are not this case's business: only the
				// count, and the wanted error, are checked.
				l, _ := AsErrorList(err)
				if len(l) != c.n {
					t.Errorf("got %d errors, want %d: %v", len(l), c.n, err)
				}
				var keep ErrorList
				for _, e := range l {
					if e.Field == c.field {
						keep = append(keep, e)
					}
				}
				err = keep.Err()
			}
			checkErrs(t, "both.yaml", err, []wantErr{{offset + line, c.field, c.msg}})
			if c.ledgerErr {
				return
			}
			// One at a time, as the server checks them: the stored ledger
			// is the catalog, the shop's file gives the position.
			stored, err := DecodeApps("ledger.yaml", []byte(ledger))
			if err != nil {
				t.Fatal(err)
			}
			apps, locs, err := DecodeAppsLocated("shop.yaml", []byte(shop))
			if err != nil {
				// Found without the catalog (a rule's from, an alias):
				// the error is in the shop's file on its own.
				l, _ := AsErrorList(err)
				var keep ErrorList
				for _, e := range l {
					if e.Field == c.field {
						keep = append(keep, e)
					}
				}
				checkErrs(t, "shop.yaml", keep.Err(), []wantErr{{line, c.field, c.msg}})
				return
			}
			errs := locs[0].Locate(CheckImports(&apps[0], stored))
			checkErrs(t, "shop.yaml", errs.Err(), []wantErr{{line, c.field, c.msg}})
		})
	}
}

// An import of an app that does not exist is refused when it is checked
// against the apps there are; a stream of files cannot know.
func TestImportOfMissingApp(t *testing.T) {
	apps, locs, err := DecodeAppsLocated("shop.yaml", []byte(shopApp))
	if err != nil {
		t.Fatal(err)
	}
	errs := locs[0].Locate(CheckImports(&apps[0], nil))
	checkErrs(t, "shop.yaml", errs.Err(), []wantErr{{lineOf(t, shopApp, "service: ledger/accounts"), "imports[0].service",
		`no app "ledger": apply the app that exports ledger/accounts first`}})
	// Without a file: the field alone.
	if errs := CheckImports(&apps[0], nil); len(errs) != 1 || errs[0].Line != 0 || !strings.HasPrefix(errs[0].Error(), "imports[0].service: ") {
		t.Fatalf("got %v", errs)
	}
}

// examples/ledger.yaml and examples/shop-ledger.yaml are a consenting
// pair; the shop variant alone is refused against a store without ledger.
func TestExampleLedgerPair(t *testing.T) {
	ledger, err := DecodeApps("examples/ledger.yaml", readExample(t, "ledger.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	shop, err := DecodeApps("examples/shop-ledger.yaml", readExample(t, "shop-ledger.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := CheckImports(&shop[0], ledger); len(errs) > 0 {
		t.Fatalf("shop-ledger against ledger: %v", errs)
	}
	if errs := CheckImports(&shop[0], nil); len(errs) != 1 || errs[0].Field != "imports[0].service" {
		t.Fatalf("shop-ledger alone: %v", errs)
	}
}
