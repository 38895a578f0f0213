package format

import "testing"

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		sec  int64
		want string
	}{
		{-5, "0s"},
		{0, "0s"},
		{40, "40s"},
		{60, "1m"},
		{25*60 + 3, "25m 3s"},
		{3600, "1h"},
		{3*3600 + 20*60 + 59, "3h 20m"},
		{86400, "1d"},
		{52*86400 + 4*3600 + 59*60, "52d 4h"},
		{358*86400 + 8*3600, "358d 8h"},
	} {
		if got := Duration(tc.sec); got != tc.want {
			t.Errorf("Duration(%d) = %q, want %q", tc.sec, got, tc.want)
		}
	}
}
