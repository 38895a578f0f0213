package rules

import (
	"fmt"
	"reflect"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// CEL values of view objects, made once per object.
//
// ext.NativeTypes wraps a Go value in a fresh CEL object on every read (a
// list element, a field holding a struct), and most of a rule's work is
// such reads; the same grant or event is read by many rules. Each view
// object therefore keeps its CEL value once made (the unexported celVal
// fields, invisible to CEL), and view lists are viewLists, whose elements
// are those cached values. Views belong to one subject and are evaluated by
// one goroutine, so the caches need no locking; emptyEvent, shared by every
// subject, is never cached.

// cachedObj is a view object that caches its CEL value.
type cachedObj interface {
	*Event | *Grant | *Session | *Approval | *Credential | *Checkout
	cache() *ref.Val
}

func (e *Event) cache() *ref.Val      { return &e.celVal }
func (g *Grant) cache() *ref.Val      { return &g.celVal }
func (s *Session) cache() *ref.Val    { return &s.celVal }
func (a *Approval) cache() *ref.Val   { return &a.celVal }
func (c *Credential) cache() *ref.Val { return &c.celVal }
func (k *Checkout) cache() *ref.Val   { return &k.celVal }

// objVal returns the CEL value of o, making it on first use.
func objVal[T cachedObj](a types.Adapter, o T) ref.Val {
	if any(o) == any(emptyEvent) {
		return a.NativeToValue(o)
	}
	c := o.cache()
	if *c == nil {
		*c = a.NativeToValue(o)
	}
	return *c
}

// eventSub returns the CEL value of a struct held by value in an event
// (subject, actor, entitlement, refs); field picks its cache and the struct.
func eventSub(a types.Adapter, e *Event, field func(*Event) (*ref.Val, any)) ref.Val {
	c, p := field(e)
	if e == emptyEvent {
		return a.NativeToValue(p)
	}
	if *c == nil {
		*c = a.NativeToValue(p)
	}
	return *c
}

// viewList is a CEL list over a view slice. Get and iteration hand out the
// elements' cached values; Value is the Go slice itself, which the list
// helpers (firstAfter, ...) use to binary-search without conversion. The
// remaining methods are those of cel-go's list over the same slice, made
// only if one is called.
type viewList[T cachedObj] struct {
	a     types.Adapter
	items []T
	std   traits.Lister
}

func newViewList[T cachedObj](a types.Adapter, items []T) *viewList[T] {
	return &viewList[T]{a: a, items: items}
}

// base is cel-go's list over the same slice.
func (l *viewList[T]) base() traits.Lister {
	if l.std == nil {
		l.std = types.NewDynamicList(l.a, l.items)
	}
	return l.std
}

func (l *viewList[T]) Add(o ref.Val) ref.Val      { return l.base().Add(o) }
func (l *viewList[T]) Contains(o ref.Val) ref.Val { return l.base().Contains(o) }
func (l *viewList[T]) ConvertToNative(t reflect.Type) (any, error) {
	return l.base().ConvertToNative(t)
}
func (l *viewList[T]) ConvertToType(t ref.Type) ref.Val { return l.base().ConvertToType(t) }
func (l *viewList[T]) Equal(o ref.Val) ref.Val          { return l.base().Equal(o) }
func (l *viewList[T]) Type() ref.Type                   { return types.ListType }

func (l *viewList[T]) Get(i ref.Val) ref.Val {
	if n, ok := i.(types.Int); ok && n >= 0 && int64(n) < int64(len(l.items)) {
		return objVal(l.a, l.items[n])
	}
	return l.base().Get(i) // the standard conversions and errors
}

func (l *viewList[T]) Size() ref.Val { return types.Int(len(l.items)) }

func (l *viewList[T]) Value() any { return l.items }

func (l *viewList[T]) Iterator() traits.Iterator { return &viewIter[T]{l: l} }

// viewIter iterates a viewList.
type viewIter[T cachedObj] struct {
	l *viewList[T]
	i int
}

// The ref.Val methods of an iterator, which CEL never calls.
func (it *viewIter[T]) ConvertToNative(t reflect.Type) (any, error) {
	return nil, fmt.Errorf("an iterator cannot be converted to %v", t)
}
func (it *viewIter[T]) ConvertToType(ref.Type) ref.Val {
	return types.NewErr("an iterator cannot be converted")
}
func (it *viewIter[T]) Equal(ref.Val) ref.Val { return types.False }
func (it *viewIter[T]) Type() ref.Type        { return types.IteratorType }
func (it *viewIter[T]) Value() any            { return nil }

func (it *viewIter[T]) HasNext() ref.Val { return types.Bool(it.i < len(it.l.items)) }

func (it *viewIter[T]) Next() ref.Val {
	if it.i >= len(it.l.items) {
		return nil
	}
	v := objVal(it.l.a, it.l.items[it.i])
	it.i++
	return v
}

// IsZeroValue reports whether the list is empty (traits.Zeroer).
func (l *viewList[T]) IsZeroValue() bool { return len(l.items) == 0 }

var (
	_ traits.Lister   = (*viewList[*Event])(nil)
	_ traits.Zeroer   = (*viewList[*Event])(nil)
	_ traits.Iterator = (*viewIter[*Event])(nil)
)

// viewMap is a CEL map over a view map with string keys. cel-go's map over
// a Go map reads it through reflection and wraps the value it finds anew on
// every lookup (a list of events as a reflective list, whose elements are
// wrapped again on every read); rules look these maps up once per element
// they iterate. Find, Get and Contains with a string key read the Go map
// directly and hand out the values' cached CEL values (val); everything
// else is cel-go's map over the same Go map, made only if needed, so
// results and errors are the same.
type viewMap[V any] struct {
	a   types.Adapter
	m   map[string]V
	val func(types.Adapter, V) ref.Val
	std traits.Mapper
}

func newObjMap[T cachedObj](a types.Adapter, m map[string]T) *viewMap[T] {
	return &viewMap[T]{a: a, m: m, val: objVal[T]}
}

func newListMap[T cachedObj](a types.Adapter, m map[string][]T) *viewMap[[]T] {
	return &viewMap[[]T]{a: a, m: m, val: func(a types.Adapter, items []T) ref.Val { return newViewList(a, items) }}
}

// base is cel-go's map over the same Go map.
func (m *viewMap[V]) base() traits.Mapper {
	if m.std == nil {
		m.std = m.a.NativeToValue(m.m).(traits.Mapper)
	}
	return m.std
}

func (m *viewMap[V]) Find(key ref.Val) (ref.Val, bool) {
	if k, ok := key.(types.String); ok {
		v, found := m.m[string(k)]
		if !found {
			return nil, false
		}
		return m.val(m.a, v), true
	}
	return m.base().Find(key)
}

func (m *viewMap[V]) Get(key ref.Val) ref.Val {
	if k, ok := key.(types.String); ok {
		if v, found := m.m[string(k)]; found {
			return m.val(m.a, v)
		}
	}
	return m.base().Get(key) // the missing-key error, or a bad key's
}

func (m *viewMap[V]) Contains(key ref.Val) ref.Val {
	if k, ok := key.(types.String); ok {
		_, found := m.m[string(k)]
		return types.Bool(found)
	}
	return m.base().Contains(key)
}

func (m *viewMap[V]) Size() ref.Val             { return types.Int(len(m.m)) }
func (m *viewMap[V]) IsZeroValue() bool         { return len(m.m) == 0 }
func (m *viewMap[V]) Iterator() traits.Iterator { return m.base().Iterator() }
func (m *viewMap[V]) Equal(o ref.Val) ref.Val   { return m.base().Equal(o) }
func (m *viewMap[V]) ConvertToNative(t reflect.Type) (any, error) {
	return m.base().ConvertToNative(t)
}
func (m *viewMap[V]) ConvertToType(t ref.Type) ref.Val { return m.base().ConvertToType(t) }
func (m *viewMap[V]) Type() ref.Type                   { return types.MapType }
func (m *viewMap[V]) Value() any                       { return m.m }

var (
	_ traits.Mapper = (*viewMap[*Event])(nil)
	_ traits.Zeroer = (*viewMap[*Event])(nil)
)
