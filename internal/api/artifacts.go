package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// artifactTimeout bounds one artifact upload or download.
const artifactTimeout = 30 * time.Minute

// PushArtifact uploads size bytes of r, whose SHA-256 is sum, to the
// control plane's artifact store (streamed, not held in memory).
func (c *Client) PushArtifact(ctx context.Context, sum string, r io.Reader, size int64) (ArtifactInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, artifactTimeout)
	defer cancel()
	u := c.base + "/v1/artifacts?" + url.Values{"sha256": {sum}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, r)
	if err != nil {
		return ArtifactInfo{}, fmt.Errorf("api: %w", err)
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return ArtifactInfo{}, fmt.Errorf("api: POST /v1/artifacts: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return ArtifactInfo{}, readStatusError(resp)
	}
	var info ArtifactInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&info); err != nil {
		return ArtifactInfo{}, fmt.Errorf("api: POST /v1/artifacts: decode answer: %w", err)
	}
	return info, nil
}

// ListArtifacts lists the control plane's artifact store.
func (c *Client) ListArtifacts(ctx context.Context) ([]ArtifactInfo, error) {
	var out []ArtifactInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/artifacts"}, &out)
	return out, err
}

// FetchArtifact opens the artifact sum of the control plane's store (an
// agent's mTLS client, or an admin's). The caller closes it; a non-200
// answer is a *StatusError.
func (c *Client) FetchArtifact(ctx context.Context, sum string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/artifacts/"+url.PathEscape(sum), nil)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api: GET /v1/artifacts/%s: %w", sum, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readStatusError(resp)
	}
	return resp.Body, nil
}
