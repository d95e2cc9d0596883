// Package apitest checks that a package declares the same exported API
// on every OS, so that a program that builds against it on Linux builds
// on macOS, the BSDs and Windows too, where the package has stubs.
//
// It reads the source, without type-checking: for each OS it parses the
// files that OS builds and lists every exported constant, variable, type
// (with its exported fields or methods), function and method, with its
// declaration as written, names of parameters aside.
package apitest
