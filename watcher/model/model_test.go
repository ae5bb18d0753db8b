package model

import (
	"reflect"
	"testing"
)

// TestEqualNamesEveryField: Service.Equal and EndpointSlice.Equal see a
// change to any field, so that a field added to the model is not left out
// of them (the store would leave its changes unsaved, the control plane
// would miss an endpoint change).
func TestEqualNamesEveryField(t *testing.T) {
	check := func(typ reflect.Type, equal func(a, b reflect.Value) bool) {
		for i := range typ.NumField() {
			a, b := reflect.New(typ), reflect.New(typ)
			b.Elem().Field(i).Set(nonZero(typ.Field(i).Type))
			if equal(a, b) {
				t.Errorf("the comparison of %s ignores field %s", typ, typ.Field(i).Name)
			}
		}
	}
	check(reflect.TypeFor[Service](), func(a, b reflect.Value) bool {
		return a.Interface().(*Service).Equal(b.Interface().(*Service))
	})
	check(reflect.TypeFor[EndpointSlice](), func(a, b reflect.Value) bool {
		return a.Interface().(*EndpointSlice).Equal(b.Interface().(*EndpointSlice))
	})
}

// nonZero returns a value of typ other than its zero value.
func nonZero(typ reflect.Type) reflect.Value {
	v := reflect.New(typ).Elem()
	switch typ.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(typ, 1, 1))
	case reflect.Struct:
		v.Field(0).Set(nonZero(typ.Field(0).Type))
	default:
		panic("nonZero: add " + typ.Kind().String())
	}
	return v
}
