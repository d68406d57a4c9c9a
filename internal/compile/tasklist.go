package compile

import (
	"encoding/json"
	"iter"
)

// TaskList is a plan's tasks, app by app in the plan's app order, each
// app's by class name and index. Through a Cache an app whose tasks come
// out the same as in the last compile keeps that compile's list, the one
// slice: a one-class change makes the list of one app, not a new list of
// every task (10,000 tasks are 1.7 MB, which was a fifth of what such a
// change allocated, and the collector's work grows with that). In JSON it
// is one flat list, as a []Task.
//
// The zero value is an empty list. A TaskList and the slices it hands out
// are read-only: plans share them.
type TaskList struct {
	apps [][]Task
	n    int
}

// NewTaskList groups a flat, app-ordered list of tasks by app.
func NewTaskList(flat []Task) TaskList {
	return TaskList{apps: byApp(flat, func(t *Task) string { return t.App }), n: len(flat)}
}

// add appends one app's tasks; an app without tasks is left out.
func (l *TaskList) add(tasks []Task) {
	if len(tasks) > 0 {
		l.apps = append(l.apps, tasks)
		l.n += len(tasks)
	}
}

// Len is the number of tasks.
func (l TaskList) Len() int { return l.n }

// Apps are the tasks app by app, in the plan's app order, one list per
// app (a list made by NewTaskList from tasks not grouped by app has one
// per run): shared, not copied, and so read-only.
func (l TaskList) Apps() [][]Task { return l.apps }

// All yields every task in order.
func (l TaskList) All() iter.Seq[Task] {
	return func(yield func(Task) bool) {
		for _, ts := range l.apps {
			for i := range ts {
				if !yield(ts[i]) {
					return
				}
			}
		}
	}
}

// Flat is every task in one new slice.
func (l TaskList) Flat() []Task {
	out := make([]Task, 0, l.n)
	for _, ts := range l.apps {
		out = append(out, ts...)
	}
	return out
}

// MarshalJSON writes one flat list, as a []Task would be written ([]
// when there is none).
func (l TaskList) MarshalJSON() ([]byte, error) {
	flat := l.Flat()
	return json.Marshal(flat)
}

// UnmarshalJSON reads a flat list (null is no tasks).
func (l *TaskList) UnmarshalJSON(b []byte) error {
	var flat []Task
	if err := json.Unmarshal(b, &flat); err != nil {
		return err
	}
	*l = NewTaskList(flat)
	return nil
}
