// Package rulecheck holds the tests that hold the synthetic organisation
// (package synth) and the example feeds in testdata/feeds to the built-in
// rule catalog: every planted failure must be found by both the CEL catalog
// and the plain-Go oracle, and nothing else may be. It has no API; it is a
// separate package so that synth's own tests do not depend on the rules
// engine.
package rulecheck
