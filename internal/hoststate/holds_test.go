package hoststate

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// A published client range or an outside destination that holds a
// server's underlay address is refused, naming the field (from the
// compiler's golden host states with ingress and egress).
func TestPrefixHoldingServerRefused(t *testing.T) {
	for _, c := range []struct{ dir, field string }{{"ingress", "ingress[0].clients[0]"}, {"egress", "outbound[0].dests[0]"}} {
		b, err := os.ReadFile("../compile/testdata/" + c.dir + "/plan.golden.json")
		if err != nil {
			t.Fatal(err)
		}
		var plan struct{ Hosts []State }
		if err := json.Unmarshal(b, &plan); err != nil {
			t.Fatal(err)
		}
		tried := 0
		for _, st := range plan.Hosts {
			var in = st.Ingress
			var out = st.Outbound
			switch {
			case c.dir == "ingress" && len(in) > 0 && len(in[0].Clients) > 0:
				tried++
				err = Validate(st, Options{ServerAddrs: []netip.Addr{in[0].Clients[0].Addr()}})
			case c.dir == "egress" && len(out) > 0 && len(out[0].Dests) > 0:
				tried++
				err = Validate(st, Options{ServerAddrs: []netip.Addr{out[0].Dests[0].Addr()}})
			default:
				continue
			}
			if err == nil || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), "holds the server address") {
				t.Errorf("%s: %s: %v, want a refusal of %s", c.dir, st.Host, err, c.field)
			}
			if err := Validate(st, Options{}); err != nil {
				t.Errorf("%s: %s is refused without the server address: %v", c.dir, st.Host, err)
			}
		}
		if tried == 0 {
			t.Fatalf("%s: no host state with the field", c.dir)
		}
	}
}
