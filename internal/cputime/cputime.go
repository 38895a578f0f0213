// Package cputime reads the CPU time the process has used, for benchmarks
// and `grantline bench`: CPU per event moves far less with the load of
// other processes on a shared machine than events per second do
// (docs/BENCHMARKS.md).
package cputime
