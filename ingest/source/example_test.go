package source_test

import (
	"fmt"
	"strings"

	"github.com/grantline/grantline/ingest/source"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Read a CloudTrail log file: the assignment request becomes a grant, the
// failed call nothing.
func ExampleFormat_Read() {
	f, err := source.Lookup("cloudtrail")
	if err != nil {
		panic(err)
	}
	file := `{"Records": [
{"eventID": "3f1b7c2a-5e4d-4a9b-8c7e-6d5f4e3a2b1c", "eventTime": "2026-09-15T10:01:44Z", "eventSource": "sso.amazonaws.com", "eventName": "CreateAccountAssignment", "recipientAccountId": "111122223333",
 "requestParameters": {"targetId": "444455556666", "targetType": "AWS_ACCOUNT", "permissionSetArn": "arn:aws:sso:::permissionSet/ssoins-1/ps-2", "principalType": "USER", "principalId": "9448-ana"},
 "responseElements": {"accountAssignmentCreationStatus": {"status": "IN_PROGRESS", "requestId": "c1a4"}}},
{"eventID": "3d1f7a2e-5c4b-4e9f-867c-6b5d4c3e2f1a", "eventTime": "2026-09-15T10:05:40Z", "eventSource": "iam.amazonaws.com", "eventName": "AttachUserPolicy", "errorCode": "AccessDenied"}
]}`
	err = f.Read("trail.json", strings.NewReader(file), "aws-prod", func(rec source.Record, evs []*pb.Event) error {
		fmt.Printf("record %d (line %d): %d event(s)\n", rec.N, rec.Line, len(evs))
		for _, ev := range evs {
			fmt.Println(" ", ev.GetId(), ev.GetType(), ev.GetSubject().GetId(), ev.GetEntitlement().GetId(), ev.GetSource().GetSystem())
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	// Output:
	// record 1 (line 2): 1 event(s)
	//   3f1b7c2a-5e4d-4a9b-8c7e-6d5f4e3a2b1c grant.assigned 9448-ana arn:aws:sso:::permissionSet/ssoins-1/ps-2@444455556666 aws-prod
	// record 2 (line 5): 0 event(s)
}
