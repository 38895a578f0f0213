// Package diskfree reports the free space of a filesystem, for the guards
// that refuse work a full disk would break (the badger store's writes, a
// partitioned evaluation's spill files). Bytes is safe for concurrent use.
package diskfree
