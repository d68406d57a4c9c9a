package compile

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// A TaskList is written as the flat []Task it holds, and read back from
// that list, grouped by app.
func TestTaskListJSON(t *testing.T) {
	p, err := Compile(sizedFleet(20, 4, 10))
	if err != nil {
		t.Fatal(err)
	}
	flat := p.Tasks.Flat()
	if len(flat) != p.Tasks.Len() || len(p.Tasks.Apps()) != 4 {
		t.Fatalf("%d tasks flat, Len %d, %d apps", len(flat), p.Tasks.Len(), len(p.Tasks.Apps()))
	}
	got, err := json.Marshal(p.Tasks)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(flat)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("TaskList JSON differs from the flat list's:\n%s\n%s", got, want)
	}
	var back TaskList
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, p.Tasks) {
		t.Errorf("read back as %d apps of %d tasks, want %d of %d", len(back.Apps()), back.Len(), len(p.Tasks.Apps()), p.Tasks.Len())
	}
	var i int
	for tk := range p.Tasks.All() {
		if !tk.equal(&flat[i]) {
			t.Fatalf("All yields %s at %d, Flat has %s", tk.ID, i, flat[i].ID)
		}
		i++
	}
	if js, _ := json.Marshal(TaskList{}); string(js) != "[]" {
		t.Errorf("empty list written as %s, want []", js)
	}
}

// Through a Cache, a one-class change makes a new task list for the
// changed app only: every other app's is the last plan's, the same slice.
func TestCacheKeepsUnchangedTaskLists(t *testing.T) {
	in, k, p0 := oneChange(t, sizedFleet(40, 6, 10), 3)
	p1, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	before, after := p0.Tasks.Apps(), p1.Tasks.Apps()
	if len(before) != len(after) {
		t.Fatalf("%d apps, then %d", len(before), len(after))
	}
	for i := range after {
		same := &before[i][0] == &after[i][0]
		if changed := after[i][0].App == in.Apps[3].Name; same == changed {
			t.Errorf("app %s: list shared with the last plan: %v", after[i][0].App, same)
		}
	}
	// And the plan is Compile's, byte for byte.
	want, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, p1), mustJSON(t, want); !bytes.Equal(a, b) {
		t.Error("the cached compile's plan differs from Compile's")
	}
}

// Task.equal and Reason.equal compare every field: one added to either
// type must be compared there too, or a cached task list (sameTasks) would
// keep its old value.
func TestTaskEqualKnowsEveryField(t *testing.T) {
	if n := reflect.TypeFor[Task]().NumField(); n != 8 {
		t.Errorf("Task has %d fields, Task.equal compares 8: compare the new one", n)
	}
	if n := reflect.TypeFor[Reason]().NumField(); n != 4 {
		t.Errorf("Reason has %d fields, Reason.equal compares 4: compare the new one", n)
	}
}
