package api

import (
	"context"
	"net/http"
)

// DrainServer sets server name draining (drain true): no new task lands
// there and its tasks are placed elsewhere; drain false makes it ready
// again. It returns the server as it now stands.
func (c *Client) DrainServer(ctx context.Context, name string, drain bool) (Server, error) {
	verb := "/undrain"
	if drain {
		verb = "/drain"
	}
	var out Server
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/servers" + path(name) + verb}, &out)
	return out, err
}
