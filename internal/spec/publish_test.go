package spec

import (
	"strings"
	"testing"
)

// pubApp is an app whose class web (line 5) publishes what pub says,
// from line 13 on.
func pubApp(name, pub string) string {
	return `apiVersion: corridor/v1
kind: App
name: ` + name + `
classes:
  - name: web
    tasks: 2
    guest: {runtime: netns, command: [corridor, sample, web]}
    resources: {cpu: 100m, memory: 64Mi}
    ports:
      - port: 80
      - port: 8080
    publish:
` + pub
}

func TestPublishDecodes(t *testing.T) {
	apps, err := DecodeApps("a.yaml", []byte(pubApp("shop", `      - port: 80
        from: [203.0.113.0/24, 198.51.100.7]
      - port: 8443
        to: 8080
        on: {labels: {zone: a}, address: 203.0.113.200}
        from: [192.0.2.0/24]
`)))
	if err != nil {
		t.Fatal(err)
	}
	p := apps[0].Classes[0].Publish
	if len(p) != 2 || !p[0].Encrypted() || p[0].ToPort() != 80 || p[0].Protocol != ProtoTCP || p[0].Encrypt == nil {
		t.Fatalf("publish[0] %+v: want encrypt true (default), to 80, tcp", p[0])
	}
	if c := p[0].Clients(); len(c) != 2 || c[1].String() != "198.51.100.7/32" {
		t.Fatalf("clients %v", c)
	}
	if p[1].ToPort() != 8080 || p[1].VirtualAddress().String() != "203.0.113.200" || p[1].On.Labels["zone"] != "a" {
		t.Fatalf("publish[1] %+v", p[1])
	}
	off := false
	p[0].Encrypt = &off
	if p[0].Encrypted() {
		t.Fatal("encrypt false reads as true")
	}
}

func TestPublishErrors(t *testing.T) {
	for _, tc := range []struct{ name, pub, want string }{
		{"overlay client", "      - port: 80\n        from: [100.64.0.0/16]\n",
			`a.yaml:14:16: classes[0].publish[0].from[0]: client CIDR 100.64.0.0/16 overlaps the overlay pool 100.64.0.0/10`},
		{"everyone", "      - port: 80\n        from: [0.0.0.0/0]\n",
			`a.yaml:14:16: classes[0].publish[0].from[0]: client CIDR 0.0.0.0/0 overlaps`},
		{"no clients", "      - port: 80\n",
			`a.yaml:13:9: classes[0].publish[0].from: at least one client CIDR is required`},
		{"unknown field", "      - port: 80\n        form: [192.0.2.0/24]\n",
			`a.yaml:14:9: classes[0].publish[0].form: unknown field "form"`},
		{"port the class lacks", "      - port: 80\n        to: 9000\n        from: [192.0.2.0/24]\n",
			`a.yaml:14:9: classes[0].publish[0].to: class web serves no port 9000/tcp`},
		{"bad port", "      - port: 0\n        from: [192.0.2.0/24]\n",
			`a.yaml:13:9: classes[0].publish[0].port: port must be between 1 and 65535, got 0`},
		{"encrypt disagrees", "      - port: 80\n        from: [192.0.2.0/24]\n      - port: 8080\n        from: [192.0.2.0/24]\n        encrypt: false\n",
			`a.yaml:17:9: classes[0].publish[1].encrypt: encrypt: false conflicts with encrypt: true of classes[0].publish[0] (line 13)`},
		{"address in overlay", "      - port: 80\n        on: {address: 100.70.0.1}\n        from: [192.0.2.0/24]\n",
			`a.yaml:14:14: classes[0].publish[0].on.address: address 100.70.0.1 overlaps the overlay pool`},
		{"same port twice", "      - port: 80\n        from: [192.0.2.0/24]\n      - port: 80\n        to: 8080\n        from: [198.51.100.0/24]\n",
			`a.yaml:15:9: classes[0].publish[1].port: port 80/tcp on the servers' underlay addresses is already published by class web (classes[0].publish[0] (line 13))`},
		{"not encrypt a bool", "      - port: 80\n        from: [192.0.2.0/24]\n        encrypt: maybe\n",
			`a.yaml:15:18: classes[0].publish[0].encrypt: expected true or false`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeApps("a.yaml", []byte(pubApp("shop", tc.pub)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// Two apps publishing the same address and port are refused, in one file
// and (ValidateApps, as the server runs it against stored apps) apart.
func TestPublishAcrossApps(t *testing.T) {
	one := pubApp("shop", "      - port: 80\n        on: {address: 203.0.113.9}\n        from: [192.0.2.0/24]\n")
	two := pubApp("blog", "      - port: 80\n        on: {address: 203.0.113.9}\n        from: [198.51.100.0/24]\n")
	_, err := DecodeApps("a.yaml", []byte(one+"---\n"+two))
	want := `a.yaml:29:9: classes[0].publish[0].port: port 80/tcp on address 203.0.113.9 is already published by app "shop" class web (classes[0].publish[0] (line 13))`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	a, err1 := DecodeApps("a.yaml", []byte(one))
	b, err2 := DecodeApps("b.yaml", []byte(two))
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if errs := ValidateApps(append(a, b...)); len(errs) != 1 || !strings.Contains(errs.Error(), "already published by app \"shop\"") {
		t.Fatalf("ValidateApps: %v", errs)
	}
	// Another port, or another address, is no clash; nor are two label
	// sets that differ (the compiler checks them against the servers).
	three := pubApp("blog", "      - port: 80\n        on: {address: 203.0.113.10}\n        from: [198.51.100.0/24]\n")
	if _, err := DecodeApps("a.yaml", []byte(one+"---\n"+three)); err != nil {
		t.Fatal(err)
	}
	x := pubApp("shop", "      - port: 80\n        on: {labels: {zone: a}}\n        from: [192.0.2.0/24]\n")
	y := pubApp("blog", "      - port: 80\n        on: {labels: {zone: b}}\n        from: [192.0.2.0/24]\n")
	if _, err := DecodeApps("a.yaml", []byte(x+"---\n"+y)); err != nil {
		t.Fatal(err)
	}
}
