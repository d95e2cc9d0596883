package apitest

import (
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// otherOSes are those that SameOnEveryOS compares with Linux: the ones
// CI cross-compiles for.
var otherOSes = []string{"darwin", "freebsd", "windows"}

// SameOnEveryOS fails t for each exported declaration of the package in
// the current directory that another OS lacks, has and Linux lacks, or
// declares otherwise than Linux does.
func SameOnEveryOS(t *testing.T) {
	t.Helper()
	linux := API(t, "linux")
	for _, goos := range otherOSes {
		other := API(t, goos)
		for _, k := range sortedKeys(linux) {
			switch o, ok := other[k]; {
			case !ok:
				t.Errorf("%s: missing %s", goos, linux[k])
			case o != linux[k]:
				t.Errorf("%s: %s\n\ton linux: %s", goos, o, linux[k])
			}
		}
		for _, k := range sortedKeys(other) {
			if _, ok := linux[k]; !ok {
				t.Errorf("%s: %s is not on linux", goos, other[k])
			}
		}
	}
}

// API returns the exported declarations of the package in the current
// directory as goos builds it, keyed by name ("Conn.Read" for a method).
func API(t *testing.T, goos string) map[string]string {
	t.Helper()
	ctx := build.Default
	ctx.GOOS, ctx.GOARCH, ctx.CgoEnabled = goos, "amd64", false
	pkg, err := ctx.ImportDir(".", 0)
	if err != nil {
		t.Fatalf("%s: %v", goos, err)
	}
	api := make(map[string]string)
	fset := token.NewFileSet()
	for _, name := range pkg.GoFiles {
		f, err := parser.ParseFile(fset, filepath.Join(pkg.Dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				addFunc(api, d)
			case *ast.GenDecl:
				for _, s := range d.Specs {
					addSpec(api, d.Tok, s)
				}
			}
		}
	}
	return api
}

func addFunc(api map[string]string, d *ast.FuncDecl) {
	if !d.Name.IsExported() {
		return
	}
	key, decl := d.Name.Name, "func "+d.Name.Name
	if d.Recv != nil {
		recv := types.ExprString(d.Recv.List[0].Type)
		base := strings.TrimPrefix(recv, "*")
		if !token.IsExported(base) {
			return
		}
		key = base + "." + key
		decl = "func (" + recv + ") " + d.Name.Name
	}
	api[key] = decl + signature(d.Type)
}

func addSpec(api map[string]string, tok token.Token, s ast.Spec) {
	switch s := s.(type) {
	case *ast.TypeSpec:
		if s.Name.IsExported() {
			api[s.Name.Name] = "type " + s.Name.Name + " " + typeString(s.Type)
		}
	case *ast.ValueSpec:
		for i, n := range s.Names {
			if !n.IsExported() {
				continue
			}
			decl := tok.String() + " " + n.Name
			if s.Type != nil {
				decl += " " + types.ExprString(s.Type)
			}
			if i < len(s.Values) {
				decl += " = " + types.ExprString(s.Values[i])
			}
			api[n.Name] = decl
		}
	}
}

// typeString is a type as written, but a struct's unexported fields,
// which may differ between OSes.
func typeString(e ast.Expr) string {
	st, ok := e.(*ast.StructType)
	if !ok {
		return types.ExprString(e)
	}
	var fields []string
	for _, f := range st.Fields.List {
		typ := types.ExprString(f.Type)
		if len(f.Names) == 0 && token.IsExported(strings.TrimPrefix(typ, "*")) {
			fields = append(fields, typ) // embedded
		}
		for _, n := range f.Names {
			if n.IsExported() {
				fields = append(fields, n.Name+" "+typ)
			}
		}
	}
	return "struct{" + strings.Join(fields, "; ") + "}"
}

// signature is a function's parameter and result types.
func signature(ft *ast.FuncType) string {
	sig := "(" + fieldTypes(ft.Params) + ")"
	if ft.Results != nil {
		sig += " (" + fieldTypes(ft.Results) + ")"
	}
	return sig
}

func fieldTypes(fl *ast.FieldList) string {
	if fl == nil {
		return ""
	}
	var ts []string
	for _, f := range fl.List {
		typ := types.ExprString(f.Type)
		for range max(len(f.Names), 1) {
			ts = append(ts, typ)
		}
	}
	return strings.Join(ts, ", ")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
