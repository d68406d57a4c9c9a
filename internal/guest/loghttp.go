package guest

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
)

// LogHandler serves task logs over HTTP for `corridor logs`:
//
//	GET ?task=shop/web/0&lines=100&follow=true
//
// lines defaults to 100 (-1: the whole log); with follow the answer
// streams until the client goes away. The agent mounts it behind its own
// authentication.
func LogHandler(stateDir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		task := q.Get("task")
		if task == "" {
			http.Error(w, "task: required (a task ID such as shop/web/0)", http.StatusBadRequest)
			return
		}
		lines := 100
		if v := q.Get("lines"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < -1 {
				http.Error(w, fmt.Sprintf("lines: %q is not a count (-1 for all)", v), http.StatusBadRequest)
				return
			}
			lines = n
		}
		follow := false
		if v := q.Get("follow"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				http.Error(w, fmt.Sprintf("follow: %q is not a boolean", v), http.StatusBadRequest)
				return
			}
			follow = b
		}
		if _, err := os.Stat(LogPath(stateDir, task)); err != nil {
			http.Error(w, fmt.Sprintf("task %s: no log on this host", task), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		var out io.Writer = w
		if f, ok := w.(http.Flusher); ok && follow {
			out = flushWriter{w, f}
		}
		// Once the body has begun an error cannot change the status; the
		// client sees the body end.
		_ = TailLogContext(req.Context(), stateDir, task, lines, follow, out)
	})
}

// flushWriter pushes each chunk of a followed log to the client at once.
type flushWriter struct {
	w io.Writer
	f http.Flusher
}

func (fw flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	fw.f.Flush()
	return n, err
}
