// Package main is the one small unsafe corner of cuebe: a C ABI over cuelang.org/go.
//
// Responsibilities: load a CUE module from in-memory files, keep the built value behind an
// integer handle, evaluate it with JSON values filled at paths, validate and export JSON.
//
// Protocol: every call takes and returns JSON (C strings). Returned strings are allocated with
// C.malloc and must be released with cuebe_string_free. Every exported function recovers from Go
// panics and turns them into an error response, so a panic never crosses into Rust.
//
// Safety rules: a CUE value is not safe for concurrent use, so each handle has one long-lived
// worker goroutine that runs its evaluations one at a time. An evaluation that exceeds its
// wall-clock limit returns an error at once; the worker cannot be interrupted (CUE's evaluator
// takes no context), so the handle is marked poisoned, every later call on it fails fast, and the
// handle is listed as abandoned until its worker finishes. The Rust side asks that list
// (cuebe_module_abandoned) and refuses to start more evaluations of a module while too many of
// its abandoned ones still run: a module that never terminates costs a bounded number of
// goroutines, not one per render.
//
// Why a long-lived worker rather than a goroutine per call: CUE's evaluator recurses deeply, and
// a fresh goroutine starts with a few KB of stack that grows by copying, again on every call. The
// worker keeps its grown stack (measured in the Go harness: 5-10 % off a warm render's median).
package main

/*
#include <stdlib.h>
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing/fstest"
	"time"
	"unsafe"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
	"cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/load"
	cuejson "cuelang.org/go/encoding/json"
	"cuelang.org/go/mod/modfile"
	cuemodule "cuelang.org/go/mod/module"
)

type module struct {
	id       uint64
	ctx      *cue.Context
	value    cue.Value
	poisoned atomic.Bool
	jobs     chan evalJob
	// busy is true while the worker runs an evaluation; guarded by abandonedMu so that marking
	// an abandoned evaluation and its end cannot cross.
	busy bool
}

type evalJob struct {
	req  evalRequest
	done chan evalResponse
}

func newModule(id uint64, ctx *cue.Context, v cue.Value) *module {
	m := &module{id: id, ctx: ctx, value: v, jobs: make(chan evalJob)}
	go m.serve()
	return m
}

// serve runs the handle's evaluations until the handle is freed.
func (m *module) serve() {
	for job := range m.jobs {
		abandonedMu.Lock()
		m.busy = true
		abandonedMu.Unlock()
		resp := m.run(job.req)
		abandonedMu.Lock()
		m.busy = false
		delete(abandoned, m.id)
		abandonedMu.Unlock()
		job.done <- resp
	}
}

// abandon poisons the handle after a timeout and, if its worker is still evaluating, lists it
// as abandoned until that evaluation ends.
func (m *module) abandon() {
	abandonedMu.Lock()
	defer abandonedMu.Unlock()
	m.poisoned.Store(true)
	if m.busy {
		abandoned[m.id] = struct{}{}
	}
}

var (
	abandonedMu sync.Mutex
	// abandoned holds the handles whose worker still runs an evaluation a caller gave up on.
	abandoned = map[uint64]struct{}{}
)

func (m *module) run(req evalRequest) (resp evalResponse) {
	defer func() {
		if r := recover(); r != nil {
			resp = evalResponse{Errors: []Error{{Message: fmt.Sprintf("CUE evaluation panic: %v", r), Kind: "panic"}}}
		}
	}()
	return evaluate(m, req)
}

var (
	handlesMu sync.Mutex
	handles   = map[uint64]*module{}
	nextID    uint64
)

// Position is a file:line:col inside the module.
type Position struct {
	File string `json:"file"`
	Line int    `json:"line"`
	Col  int    `json:"col"`
}

// Error is one CUE error, structured.
type Error struct {
	Message   string     `json:"message"`
	Path      string     `json:"path,omitempty"`
	Positions []Position `json:"positions,omitempty"`
	// Kind is "eval", "incomplete", "load", "timeout", "panic" or "request".
	Kind string `json:"kind"`
}

type loadRequest struct {
	Files   map[string]string `json:"files"`
	Package string            `json:"package"`
	// Deps are the CUE modules the load may resolve dependencies from (cuebe's standard
	// library): nothing else is fetched.
	Deps []shippedDep `json:"deps"`
}

// shippedDep is one version of a dependency module, held in memory.
type shippedDep struct {
	// Module is the module path with its major version, e.g. "cuebe.dev/lib@v0".
	Module string `json:"module"`
	// Version is the full version, e.g. "v0.1.0".
	Version string            `json:"version"`
	Files   map[string]string `json:"files"`
}

type loadResponse struct {
	Handle uint64  `json:"handle,omitempty"`
	Errors []Error `json:"errors,omitempty"`
}

type fill struct {
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
}

type exportSpec struct {
	Path string `json:"path"`
	// Split exports the struct at Path field by field down to this many levels, so that one
	// non-concrete field is reported on its own instead of failing the whole export.
	Split int `json:"split"`
	// Optional: a missing path yields no result instead of an error.
	Optional bool `json:"optional"`
	// ValidateOnly checks the value is concrete without encoding it (the result has no value).
	ValidateOnly bool `json:"validateOnly"`
}

type evalRequest struct {
	Fills     []fill       `json:"fills"`
	Exports   []exportSpec `json:"exports"`
	TimeoutMs int64        `json:"timeoutMs"`
}

// Exported is a tree mirroring the split structure: either a concrete JSON value, or the errors
// that kept it from being concrete, or (for a split level) its fields in order. A split request
// whose value is wholly concrete comes back as one Value; the caller splits it.
type Exported struct {
	Value  json.RawMessage `json:"value,omitempty"`
	Errors []Error         `json:"errors,omitempty"`
	Fields []Field         `json:"fields,omitempty"`
	Absent bool            `json:"absent,omitempty"`
}

// Field is one named member of a split struct.
type Field struct {
	Name string   `json:"name"`
	Item Exported `json:"item"`
}

type evalResponse struct {
	Results []Exported `json:"results,omitempty"`
	Errors  []Error    `json:"errors,omitempty"`
}

func toErrors(err error, kind string) []Error {
	var out []Error
	for _, e := range errors.Errors(err) {
		format, args := e.Msg()
		msg := fmt.Sprintf(format, args...)
		if kind == "load" {
			// A load error's own message is often only "import failed"; the cause (a missing
			// package, a refused fetch) is in the chain.
			msg = e.Error()
		}
		k := kind
		if strings.Contains(msg, "incomplete value") || strings.Contains(msg, "non-concrete value") {
			k = "incomplete"
		}
		item := Error{Message: msg, Path: strings.Join(e.Path(), "."), Kind: k}
		for _, p := range errors.Positions(e) {
			if !p.IsValid() {
				continue
			}
			item.Positions = append(item.Positions, Position{File: strings.TrimPrefix(p.Filename(), "/"), Line: p.Line(), Col: p.Column()})
		}
		out = append(out, item)
	}
	if len(out) == 0 && err != nil {
		out = append(out, Error{Message: err.Error(), Kind: kind})
	}
	return out
}

func respond(v any) *C.char {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"errors":[{"message":%q,"kind":"panic"}]}`, err.Error()))
	}
	return C.CString(string(b))
}

func panicResponse(r any) *C.char {
	msg := fmt.Sprintf("CUE bridge panic: %v\n%s", r, debug.Stack())
	return respond(evalResponse{Errors: []Error{{Message: msg, Kind: "panic"}}})
}

func loadModule(req loadRequest) (cue.Value, *cue.Context, []Error) {
	mapfs := fstest.MapFS{}
	for name, content := range req.Files {
		clean := path.Clean(strings.TrimPrefix(name, "/"))
		mapfs[clean] = &fstest.MapFile{Data: []byte(content), Mode: 0o444}
	}
	if _, err := fs.Stat(mapfs, "cue.mod/module.cue"); err != nil {
		return cue.Value{}, nil, []Error{{Message: "module has no cue.mod/module.cue", Kind: "load"}}
	}
	// The registry serves only the shipped modules, from memory. Left nil, CUE would build one
	// from the operator's environment (CUE_REGISTRY, default registry.cue.works) and a module
	// with deps would make network calls from inside cgo.
	registry, err := newShippedRegistry(mapfs, req.Deps)
	if err != nil {
		return cue.Value{}, nil, []Error{{Message: err.Error(), Kind: "load"}}
	}
	pkg := req.Package
	if pkg == "" {
		pkg = "."
	}
	cfg := &load.Config{FS: mapfs, Dir: "/", ModuleRoot: "/", Registry: registry}
	insts := load.Instances([]string{pkg}, cfg)
	if len(insts) != 1 {
		return cue.Value{}, nil, []Error{{Message: fmt.Sprintf("expected one instance for %q, got %d", pkg, len(insts)), Kind: "load"}}
	}
	if err := insts[0].Err; err != nil {
		return cue.Value{}, nil, toErrors(err, "load")
	}
	ctx := cuecontext.New()
	v := ctx.BuildInstance(insts[0])
	if err := v.Err(); err != nil {
		return cue.Value{}, nil, toErrors(err, "load")
	}
	return v, ctx, nil
}

// depsDir is where shipped dependency modules are placed inside the load's file system: with
// Config.FS set, CUE reads a dependency's files from that same file system, at the directory
// its SourceLoc names. A platform module's own files never live under cue.mod/ (bar
// module.cue), so nothing of the module is shadowed.
const depsDir = "cue.mod/cuebe-deps"

// shippedRegistry is the registry every load uses: it serves the shipped modules (cuebe's
// standard library, at the versions this build of cuebe carries) from memory and refuses
// everything else. It never opens a socket.
type shippedRegistry struct {
	// byVersion is keyed by "path@vX.Y.Z".
	byVersion map[string]shippedModule
	// versions lists the shipped versions of each "path@vN".
	versions map[string][]string
}

type shippedModule struct {
	modFile *modfile.File
	loc     cuemodule.SourceLoc
}

// rootedFS is a dependency's files; OSRoot tells cue/load where they are in Config.FS.
type rootedFS struct {
	fs.FS
	root string
}

func (r rootedFS) OSRoot() string { return r.root }

func newShippedRegistry(mapfs fstest.MapFS, deps []shippedDep) (*shippedRegistry, error) {
	r := &shippedRegistry{byVersion: map[string]shippedModule{}, versions: map[string][]string{}}
	for _, d := range deps {
		mv, err := cuemodule.NewVersion(d.Module, d.Version)
		if err != nil {
			return nil, fmt.Errorf("shipped module %s %s: %v", d.Module, d.Version, err)
		}
		dir := path.Join(depsDir, mv.String())
		for name, content := range d.Files {
			clean := path.Clean(strings.TrimPrefix(name, "/"))
			mapfs[path.Join(dir, clean)] = &fstest.MapFile{Data: []byte(content), Mode: 0o444}
		}
		data, ok := d.Files["cue.mod/module.cue"]
		if !ok {
			return nil, fmt.Errorf("shipped module %s has no cue.mod/module.cue", mv)
		}
		mf, err := modfile.Parse([]byte(data), mv.String()+"/cue.mod/module.cue")
		if err != nil {
			return nil, fmt.Errorf("shipped module %s: %v", mv, err)
		}
		sub, err := fs.Sub(mapfs, dir)
		if err != nil {
			return nil, err
		}
		r.byVersion[mv.String()] = shippedModule{
			modFile: mf,
			loc:     cuemodule.SourceLoc{FS: rootedFS{FS: sub, root: "/" + dir}, Dir: "."},
		}
		r.versions[mv.Path()] = append(r.versions[mv.Path()], mv.Version())
	}
	return r, nil
}

func (r *shippedRegistry) lookup(mv cuemodule.Version) (shippedModule, error) {
	if m, ok := r.byVersion[mv.String()]; ok {
		return m, nil
	}
	if shipped := r.versions[mv.Path()]; len(shipped) > 0 {
		return shippedModule{}, fmt.Errorf("%s is not shipped with this build of cuebe, which carries %s at %s: require one of those versions in cue.mod/module.cue (deps), or update cuebe", mv, mv.Path(), strings.Join(shipped, ", "))
	}
	return shippedModule{}, fmt.Errorf("%s: %w", mv, errNoRemoteDeps)
}

func (r *shippedRegistry) ModFile(_ context.Context, mv cuemodule.Version) (*modfile.File, error) {
	m, err := r.lookup(mv)
	return m.modFile, err
}

func (r *shippedRegistry) Fetch(_ context.Context, mv cuemodule.Version) (cuemodule.SourceLoc, error) {
	m, err := r.lookup(mv)
	return m.loc, err
}

func (r *shippedRegistry) ModuleVersions(_ context.Context, mpath string) ([]string, error) {
	if shipped, ok := r.versions[mpath]; ok {
		return shipped, nil
	}
	return nil, fmt.Errorf("%s: %w", mpath, errNoRemoteDeps)
}

var errNoRemoteDeps = errors.New("platform modules are loaded offline: the only dependencies they may have are the modules shipped with cuebe (its standard library, cuebe.dev/lib); other modules are not fetched: vendor them into the module")

//export cuebe_module_load
func cuebe_module_load(reqJSON *C.char) (out *C.char) {
	defer func() {
		if r := recover(); r != nil {
			out = panicResponse(r)
		}
	}()
	var req loadRequest
	if err := json.Unmarshal([]byte(C.GoString(reqJSON)), &req); err != nil {
		return respond(loadResponse{Errors: []Error{{Message: "bad load request: " + err.Error(), Kind: "request"}}})
	}
	v, ctx, errs := loadModule(req)
	if errs != nil {
		return respond(loadResponse{Errors: errs})
	}
	handlesMu.Lock()
	nextID++
	id := nextID
	handles[id] = newModule(id, ctx, v)
	handlesMu.Unlock()
	return respond(loadResponse{Handle: id})
}

//export cuebe_module_free
func cuebe_module_free(handle C.ulonglong) {
	handlesMu.Lock()
	m := handles[uint64(handle)]
	delete(handles, uint64(handle))
	handlesMu.Unlock()
	if m != nil {
		// The worker ends once it finishes any evaluation still running (a timed-out one).
		close(m.jobs)
	}
}

//export cuebe_string_free
func cuebe_string_free(s *C.char) {
	C.free(unsafe.Pointer(s))
}

func exportValue(v cue.Value, split int, validateOnly bool) Exported {
	if !v.Exists() {
		return Exported{Absent: true}
	}
	if split > 0 {
		// Most renders are fully concrete: one whole export is much cheaper than one per field.
		// The caller splits a whole value itself (the Rust side keeps the field order).
		if whole := exportValue(v, 0, validateOnly); whole.Errors == nil {
			return whole
		}
		if err := v.Err(); err != nil {
			return Exported{Errors: toErrors(err, "eval")}
		}
		it, err := v.Fields()
		if err != nil {
			// Not a struct: export it whole.
			return exportValue(v, 0, validateOnly)
		}
		out := Exported{Fields: []Field{}}
		for it.Next() {
			out.Fields = append(out.Fields, Field{Name: it.Selector().Unquoted(), Item: exportValue(it.Value(), split-1, validateOnly)})
		}
		return out
	}
	if validateOnly {
		if err := v.Validate(cue.Concrete(true), cue.Final()); err != nil {
			return Exported{Errors: toErrors(err, "eval")}
		}
		return Exported{}
	}
	// MarshalJSON fails on any non-concrete value, so it doubles as the validation.
	b, err := v.MarshalJSON()
	if err != nil {
		return Exported{Errors: toErrors(err, "eval")}
	}
	return Exported{Value: b}
}

func evaluate(m *module, req evalRequest) evalResponse {
	v := m.value
	for _, f := range req.Fills {
		// A fill is built as an expression, not compiled as a file: CompileBytes registers every
		// compiled file as an instance of the context's runtime, which keeps it (its syntax
		// tree and value) as long as the module handle lives: 5-20 KB per render, forever.
		expr, err := cuejson.Extract("input:"+f.Path, f.Value)
		if err != nil {
			return evalResponse{Errors: toErrors(err, "request")}
		}
		x := m.ctx.BuildExpr(expr)
		if err := x.Err(); err != nil {
			return evalResponse{Errors: toErrors(err, "request")}
		}
		v = v.FillPath(cue.ParsePath(f.Path), x)
	}
	resp := evalResponse{}
	for _, e := range req.Exports {
		sel := v
		if e.Path != "" {
			sel = v.LookupPath(cue.ParsePath(e.Path))
		}
		if !sel.Exists() {
			if e.Optional {
				resp.Results = append(resp.Results, Exported{Absent: true})
				continue
			}
			// Report why it does not exist: often the whole value is in error.
			if err := v.Err(); err != nil {
				resp.Results = append(resp.Results, Exported{Errors: toErrors(err, "eval")})
				continue
			}
			resp.Results = append(resp.Results, Exported{Errors: []Error{{Message: "the module has no value at " + e.Path, Path: e.Path, Kind: "eval"}}})
			continue
		}
		resp.Results = append(resp.Results, exportValue(sel, e.Split, e.ValidateOnly))
	}
	return resp
}

//export cuebe_module_eval
func cuebe_module_eval(handle C.ulonglong, reqJSON *C.char) (out *C.char) {
	defer func() {
		if r := recover(); r != nil {
			out = panicResponse(r)
		}
	}()
	var req evalRequest
	if err := json.Unmarshal([]byte(C.GoString(reqJSON)), &req); err != nil {
		return respond(evalResponse{Errors: []Error{{Message: "bad eval request: " + err.Error(), Kind: "request"}}})
	}
	handlesMu.Lock()
	m := handles[uint64(handle)]
	handlesMu.Unlock()
	if m == nil {
		return respond(evalResponse{Errors: []Error{{Message: fmt.Sprintf("unknown module handle %d", handle), Kind: "request"}}})
	}
	if m.poisoned.Load() {
		return respond(evalResponse{Errors: []Error{{Message: "module handle is unusable: an earlier evaluation exceeded its time limit and is still running", Kind: "timeout"}}})
	}
	done := make(chan evalResponse, 1)
	job := evalJob{req: req, done: done}
	if req.TimeoutMs <= 0 {
		m.jobs <- job
		return respond(<-done)
	}
	timer := time.NewTimer(time.Duration(req.TimeoutMs) * time.Millisecond)
	defer timer.Stop()
	// Waiting for the worker counts against the limit too: it may still be busy with an
	// evaluation another caller gave up on.
	select {
	case m.jobs <- job:
	case <-timer.C:
		m.abandon()
		return respond(timeoutResponse(req.TimeoutMs))
	}
	select {
	case r := <-done:
		return respond(r)
	case <-timer.C:
		m.abandon()
		return respond(timeoutResponse(req.TimeoutMs))
	}
}

//export cuebe_module_abandoned
func cuebe_module_abandoned(handle C.ulonglong) C.int {
	abandonedMu.Lock()
	defer abandonedMu.Unlock()
	if _, ok := abandoned[uint64(handle)]; ok {
		return 1
	}
	return 0
}

//export cuebe_goroutines
func cuebe_goroutines() C.longlong {
	return C.longlong(runtime.NumGoroutine())
}

// goMemorySamples are what cuebe_go_memory reports, in its out array's order.
var goMemorySamples = []string{
	"/gc/heap/live:bytes",                 // heap objects the last collection found reachable
	"/gc/heap/goal:bytes",                 // heap size at which the next collection starts
	"/memory/classes/total:bytes",         // everything the Go runtime mapped
	"/memory/classes/heap/released:bytes", // of that, returned to the OS
}

// cuebe_go_memory writes the Go runtime's memory figures (see goMemorySamples) into out, which
// has room for 4 values. runtime/metrics reads them without stopping the world.
//
//export cuebe_go_memory
func cuebe_go_memory(out *C.ulonglong) {
	samples := make([]metrics.Sample, len(goMemorySamples))
	for i, name := range goMemorySamples {
		samples[i].Name = name
	}
	metrics.Read(samples)
	values := unsafe.Slice(out, len(samples))
	for i, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			values[i] = C.ulonglong(s.Value.Uint64())
		} else {
			values[i] = 0
		}
	}
}

// cuebe_go_heap_profile collects garbage, then writes a pprof heap profile of the bridge's Go
// runtime to path (read it with `go tool pprof`). It returns NULL, or the error as a string the
// caller releases with cuebe_string_free. A diagnostic: it stops the world for one collection.
//
//export cuebe_go_heap_profile
func cuebe_go_heap_profile(path *C.char) *C.char {
	runtime.GC()
	f, err := os.Create(C.GoString(path))
	if err != nil {
		return C.CString(err.Error())
	}
	err = pprof.WriteHeapProfile(f)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return C.CString(err.Error())
	}
	return nil
}

func timeoutResponse(ms int64) evalResponse {
	return evalResponse{Errors: []Error{{
		Message: fmt.Sprintf("CUE evaluation did not finish within %dms; the module may not terminate", ms),
		Kind:    "timeout",
	}}}
}

// renderGCPercent is the Go GC target used unless GOGC is set. A render allocates about 1 MB of
// short-lived evaluator state against a live heap of a few MB (the loaded modules), so at Go's
// default of 100 the collector runs several times per render; at 400 a warm render is about 15 %
// faster and the heap stays in the tens of MB.
const renderGCPercent = 400

func init() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(renderGCPercent)
	}
}

func main() {}
