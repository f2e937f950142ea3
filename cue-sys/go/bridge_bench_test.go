package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cuelang.org/go/cue"
)

func loadPlatform(b *testing.B) *module {
	root := "../../cue/platform"
	if r := os.Getenv("CUEBE_BENCH_MODULE"); r != "" {
		root = r
	}
	// The platform module depends on cuebe's standard library, shipped from sdk/core/cue/lib.
	libRoot := "../../sdk/core/cue/lib"
	if r := os.Getenv("CUEBE_BENCH_LIB"); r != "" {
		libRoot = r
	}
	lib := shippedDep{Module: "cuebe.dev/lib@v0", Version: "v0.1.0", Files: readCUEFiles(libRoot)}
	v, ctx, errs := loadModule(loadRequest{Files: readCUEFiles(root), Package: "./webservice", Deps: []shippedDep{lib}})
	if errs != nil {
		b.Fatal(errs)
	}
	return &module{ctx: ctx, value: v}
}

// readCUEFiles reads every .cue file under root, by path relative to it.
func readCUEFiles(root string) map[string]string {
	files := map[string]string{}
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".cue") {
			data, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(root, p)
			files[rel] = string(data)
		}
		return nil
	})
	return files
}

const benchInput = `{"metadata":{"name":"web","namespace":"apps","labels":{}},"spec":{"image":"registry.example.com/web:1.4.2","resources":{"cpu":"250m","memory":"256Mi"}},"capabilities":{},"exports":{}}`

func BenchmarkFillOnly(b *testing.B) {
	m := loadPlatform(b)
	for i := 0; i < b.N; i++ {
		x := m.ctx.CompileString(benchInput)
		v := m.value.FillPath(cue.ParsePath("input"), x)
		_ = v
	}
}

func BenchmarkFillValidate(b *testing.B) {
	m := loadPlatform(b)
	for i := 0; i < b.N; i++ {
		x := m.ctx.CompileString(benchInput)
		v := m.value.FillPath(cue.ParsePath("input"), x)
		if err := v.LookupPath(cue.ParsePath("nodes")).Validate(cue.Concrete(true)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNodesOnly(b *testing.B) {
	m := loadPlatform(b)
	for i := 0; i < b.N; i++ {
		x := m.ctx.CompileString(benchInput)
		v := m.value.FillPath(cue.ParsePath("input"), x)
		_, err := v.LookupPath(cue.ParsePath("nodes")).MarshalJSON()
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkViolationsOnly(b *testing.B) {
	m := loadPlatform(b)
	for i := 0; i < b.N; i++ {
		x := m.ctx.CompileString(benchInput)
		v := m.value.FillPath(cue.ParsePath("input"), x)
		_, err := v.LookupPath(cue.ParsePath("violations")).MarshalJSON()
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFullRequest(b *testing.B) {
	m := loadPlatform(b)
	input := benchInput
	if f := os.Getenv("CUEBE_BENCH_INPUT"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		input = string(data)
	}
	req := evalRequest{
		Fills:   []fill{{Path: "input", Value: json.RawMessage(input)}},
		Exports: []exportSpec{{Path: "input", ValidateOnly: true}, {Path: "violations", Optional: true}, {Path: "nodes", Split: 2}},
	}
	for i := 0; i < b.N; i++ {
		r := evaluate(m, req)
		if len(r.Errors) > 0 {
			b.Fatal(r.Errors)
		}
	}
}

// BenchmarkConstantOutputFloor runs the same request on a module whose `nodes` is the platform
// module's own render of the input written out as constants: what CUE costs to fill the input,
// re-evaluate and export this much output when there is no logic at all. Compare it with
// BenchmarkFullRequest on the same input (CUEBE_BENCH_INPUT).
func BenchmarkConstantOutputFloor(b *testing.B) {
	m := loadPlatform(b)
	input := []byte(benchInput)
	if f := os.Getenv("CUEBE_BENCH_INPUT"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		input = data
	}
	rendered := m.value.FillPath(cue.ParsePath("input"), m.ctx.CompileBytes(input))
	nodes, err := rendered.LookupPath(cue.ParsePath("nodes")).MarshalJSON()
	if err != nil {
		b.Fatal(err)
	}
	floor, ctx, errs := loadModule(loadRequest{
		Files: map[string]string{
			"cue.mod/module.cue": "module: \"floor.example.com/floor@v0\"\nlanguage: version: \"v0.17.0\"\n",
			"floor/floor.cue":    "package floor\ninput: _\nviolations: []\nnodes: " + string(nodes) + "\n",
		},
		Package: "./floor",
	})
	if errs != nil {
		b.Fatal(errs)
	}
	req := evalRequest{
		Fills:   []fill{{Path: "input", Value: json.RawMessage(input)}},
		Exports: []exportSpec{{Path: "input", ValidateOnly: true}, {Path: "violations", Optional: true}, {Path: "nodes", Split: 2}},
	}
	f := &module{ctx: ctx, value: floor}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := evaluate(f, req); len(r.Errors) > 0 || r.Results[2].Errors != nil {
			b.Fatal(r)
		}
	}
}
