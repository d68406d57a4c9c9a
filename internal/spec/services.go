package spec

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Export offers ports of one class of the app to other apps as a named
// service. An export alone opens nothing: a path exists only where another
// app imports the service and writes a rule to it (consent on both sides).
type Export struct {
	// Name is the service's name within the app; others import it as
	// "<app>/<name>".
	Name     string `yaml:"name" json:"name"`
	Class    string `yaml:"class" json:"class"`
	Ports    []int  `yaml:"ports" json:"ports"`
	Protocol string `yaml:"protocol,omitempty" json:"protocol,omitempty"` // default tcp
}

// Import takes another app's exported service in: the app's rules may
// then name it (by As) as their `to`, like one of its own classes, each
// with its own encrypt. Only the exported ports may be named.
type Import struct {
	// Service is "<app>/<service>": an app and the name of one of its
	// exports.
	Service string `yaml:"service" json:"service"`
	// As is the name the app's rules use; default the service's name. It
	// may not be one of the app's class names.
	As string `yaml:"as,omitempty" json:"as,omitempty"`
}

// Limits of the services sections.
const (
	MaxExports = 100
	MaxImports = 100
)

// ParseService splits "<app>/<service>".
func ParseService(s string) (app, name string, err error) {
	app, name, ok := strings.Cut(s, "/")
	if !ok || !ValidName(app) || !ValidName(name) {
		return "", "", fmt.Errorf("service %q is not <app>/<service>, such as shop/orders (each 1 to %d lowercase letters, digits and '-')", truncate(s), MaxNameLen)
	}
	return app, name, nil
}

// Alias is the name the app's rules give the import: As, or the service's
// name.
func (im Import) Alias() string {
	if im.As != "" {
		return im.As
	}
	_, name, _ := strings.Cut(im.Service, "/")
	return name
}

// Export is the app's export of that name, or nil.
func (a *App) Export(name string) *Export {
	for i := range a.Exports {
		if a.Exports[i].Name == name {
			return &a.Exports[i]
		}
	}
	return nil
}

// ImportOf is the app's import its rules call alias, or nil.
func (a *App) ImportOf(alias string) *Import {
	for i := range a.Imports {
		if a.Imports[i].Alias() == alias {
			return &a.Imports[i]
		}
	}
	return nil
}

func setServiceDefaults(a *App) {
	for i := range a.Exports {
		a.Exports[i].Protocol = Protocol(a.Exports[i].Protocol)
	}
	for i := range a.Imports {
		if a.Imports[i].As == "" {
			if _, name, err := ParseService(a.Imports[i].Service); err == nil {
				a.Imports[i].As = name
			}
		}
	}
}

// importAliases maps each import's alias to its index.
func importAliases(a *App) map[string]int {
	m := map[string]int{}
	for i, im := range a.Imports {
		if al := im.Alias(); al != "" {
			if _, dup := m[al]; !dup {
				m[al] = i
			}
		}
	}
	return m
}

// importHint completes "class X is not defined" for a rule's to.
func importHint(role string, imports map[string]int) string {
	if role != "to" {
		return ""
	}
	if len(imports) == 0 {
		return "; to reach another app's service, import it (imports)"
	}
	names := make([]string, 0, len(imports))
	for n := range imports {
		names = append(names, n)
	}
	slices.Sort(names)
	return " nor imported (imports: " + strings.Join(names, ", ") + ")"
}

func validateServices(w *where, a *App, classes map[string]int) {
	if len(a.Exports) > MaxExports {
		w.errorf("exports", "an app has at most %d exports, got %d", MaxExports, len(a.Exports))
	}
	if len(a.Imports) > MaxImports {
		w.errorf("imports", "an app has at most %d imports, got %d", MaxImports, len(a.Imports))
	}
	names := map[string]string{}
	for i, e := range a.Exports {
		p := indexPath("exports", i)
		checkName(w, p+".name", "service name", e.Name)
		if e.Name != "" {
			if prev, dup := names[e.Name]; dup {
				w.errorf(p+".name", "service %q is already exported by %s", e.Name, w.ref(prev))
			}
			names[e.Name] = p
		}
		switch _, ok := classes[e.Class]; {
		case e.Class == "":
			w.errorf(p+".class", "class is required: the class whose tasks serve the service")
		case !ok:
			w.errorf(p+".class", "class %q is not defined in this app", truncate(e.Class))
		}
		checkProtocol(w, p+".protocol", e.Protocol)
		checkPorts(w, p+".ports", e.Ports, "in this export ")
	}
	aliases := map[string]string{}
	services := map[string]string{}
	for i, im := range a.Imports {
		p := indexPath("imports", i)
		app, _, err := ParseService(im.Service)
		switch {
		case im.Service == "":
			w.errorf(p+".service", "service is required: <app>/<service> of another app's export")
		case err != nil:
			w.errorf(p+".service", "%v", err)
		case app == a.Name:
			w.errorf(p+".service", "service %s is this app's own: write rules to the class itself", im.Service)
		default:
			if prev, dup := services[im.Service]; dup {
				w.errorf(p+".service", "service %s is already imported by %s", im.Service, w.ref(prev))
			}
			services[im.Service] = p
		}
		al := im.Alias()
		ap := p + ".as"
		if im.As == "" {
			ap = p + ".service"
		}
		if al == "" {
			continue
		}
		if im.As != "" {
			checkName(w, ap, "import name", im.As)
		}
		if _, clash := classes[al]; clash {
			w.errorf(ap, "%q is also a class of this app: give the import another name with as", al)
		}
		if prev, dup := aliases[al]; dup {
			w.errorf(ap, "%q already names %s: give one of them another name with as", al, w.ref(prev))
		}
		aliases[al] = p
	}
}

// CheckImports checks a's imports against the apps in catalog (a itself
// may be among them; another app of a's name is ignored): every imported
// service must exist and be exported, a rule to an imported service may
// name only its exported ports and protocol, and the pair of a class of a
// and the exporting class must not be encrypted one way and plain the
// other (when the exporter also reaches a through an import of its own).
// Fields are named as in a; ErrorList entries carry no file or line (use a
// Locator from DecodeAppsLocated to add them). The server calls it when an
// app is applied, against the stored apps.
func CheckImports(a *App, catalog []App) ErrorList {
	var errs ErrorList
	checkImports(newWhere("", &errs), a, catalogLookup(a, catalog), true)
	return errs
}

func catalogLookup(a *App, catalog []App) func(string) *App {
	return func(name string) *App {
		if name == a.Name {
			return a
		}
		for i := range catalog {
			if catalog[i].Name == name {
				return &catalog[i]
			}
		}
		return nil
	}
}

// checkImports reports a's imports that do not resolve through find; with
// strict false an app find does not know is left alone (another file may
// hold it).
func checkImports(w *where, a *App, find func(string) *App, strict bool) {
	type resolved struct {
		app *App
		exp *Export
	}
	res := map[string]resolved{}
	for i, im := range a.Imports {
		p := indexPath("imports", i) + ".service"
		app, name, err := ParseService(im.Service)
		if err != nil || app == a.Name {
			continue // validateServices said so
		}
		other := find(app)
		if other == nil {
			if strict {
				w.errorf(p, "no app %q: apply the app that exports %s first (an import is checked when it is applied)", app, im.Service)
			}
			continue
		}
		e := other.Export(name)
		if e == nil {
			var have []string
			for _, x := range other.Exports {
				have = append(have, x.Name)
			}
			list := "it exports nothing"
			if len(have) > 0 {
				list = "it exports: " + strings.Join(have, ", ")
			}
			w.errorf(p, "app %s does not export a service %q (%s): both sides must consent, add the export to %s first", app, name, list, app)
			continue
		}
		res[im.Alias()] = resolved{other, e}
	}
	for i, r := range a.Rules {
		rv, ok := res[r.To]
		if !ok || a.ImportOf(r.To) == nil {
			continue
		}
		p := indexPath("rules", i)
		if Protocol(r.Protocol) != Protocol(rv.exp.Protocol) {
			w.errorf(p+".protocol", "service %s/%s is exported on %s, not %s", rv.app.Name, rv.exp.Name, Protocol(rv.exp.Protocol), Protocol(r.Protocol))
			continue
		}
		for j, port := range r.Ports {
			if !slices.Contains(rv.exp.Ports, port) {
				w.errorf(indexPath(p+".ports", j), "port %d is not exported by service %s/%s (it exports %s/%s)", port, rv.app.Name, rv.exp.Name,
					Protocol(rv.exp.Protocol), joinPorts(rv.exp.Ports))
			}
		}
		// The other way: the exporter's rules from its class to a service
		// of a that the same class of a serves.
		for _, br := range rv.app.Rules {
			if br.From != rv.exp.Class || br.Encrypt == r.Encrypt {
				continue
			}
			bi := rv.app.ImportOf(br.To)
			if bi == nil {
				continue
			}
			bapp, bname, err := ParseService(bi.Service)
			if err != nil || bapp != a.Name {
				continue
			}
			if be := a.Export(bname); be != nil && be.Class == r.From {
				w.errorf(p+".encrypt", "encrypt: %t conflicts with encrypt: %t of app %s's rule from %s to %s (class %s of this app): traffic between a class pair is either all encrypted or all plain",
					r.Encrypt, br.Encrypt, rv.app.Name, br.From, br.To, r.From)
				break
			}
		}
	}
}

func joinPorts(ports []int) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

// Locator finds where the fields of one decoded app are in its file.
type Locator struct{ w *where }

// Locate gives each error of errs (fields named as in the app, such as
// "imports[0].service") the file, line and column of its field, or of
// its nearest ancestor the file has. It changes errs in place and returns
// it.
func (l *Locator) Locate(errs ErrorList) ErrorList {
	if l == nil {
		return errs
	}
	for _, e := range errs {
		p := l.w.at(e.Field)
		e.File, e.Line, e.Column = l.w.file, p.Line, p.Column
	}
	return errs
}

// DecodeAppsLocated is DecodeApps, and for each app a Locator that places
// errors found later (CheckImports against the stored apps) in the file.
func DecodeAppsLocated(file string, data []byte) ([]App, []*Locator, error) {
	var errs ErrorList
	docs := parseStream(file, data, KindApp, &errs)
	apps := make([]App, len(docs))
	wheres := make([]*where, len(docs))
	for i, d := range docs {
		decodeValue(d.w, d.node, reflect.ValueOf(&apps[i]).Elem(), "")
		SetAppDefaults(&apps[i])
		validateApp(&apps[i], d.w)
		wheres[i] = d.w
	}
	validateAcross(apps, wheres)
	// Imports of apps of the same stream are checked here; those of other
	// apps where the apps are known (the server, against its store).
	for i := range apps {
		checkImports(wheres[i], &apps[i], catalogLookup(&apps[i], apps), false)
	}
	if len(errs) > 0 {
		errs.sort()
		return nil, nil, errs
	}
	locs := make([]*Locator, len(wheres))
	for i, w := range wheres {
		locs[i] = &Locator{w: w}
	}
	return apps, locs, nil
}
