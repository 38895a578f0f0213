package source

import "testing"

// TestUnmappedRecordsNeverFail: records of calls and events an adapter does
// not map carry shapes it does not know; they yield nothing, never an
// error that would stop a whole file.
func TestUnmappedRecordsNeverFail(t *testing.T) {
	for _, tc := range []struct {
		name  string
		adapt Adapter
		rec   string
	}{
		{"cloudtrail other API", CloudTrail, `{"eventID":"e1","eventName":"PutBucketTagging","eventSource":"s3.amazonaws.com","eventTime":"2026-09-15T10:00:00Z","requestParameters":{"userName":{"odd":true},"status":7,"targetId":12},"responseElements":{"credentials":"x"}}`},
		{"ocsf other class", OCSF, `{"class_uid":4001,"metadata":{"uid":"n1"},"time":1788507000000,"user":"alice","session":"s","policy":[1]}`},
		{"teleport other event", Teleport, `{"uid":"u1","event":"app.session.start","time":"2026-09-12T13:00:00Z","id":42,"roles":"x","identity":"y","sid":{"a":1}}`},
	} {
		evs, err := tc.adapt([]byte(tc.rec), "sys")
		if err != nil || len(evs) != 0 {
			t.Errorf("%s: %d events, %v; want none and no error", tc.name, len(evs), err)
		}
	}
}
