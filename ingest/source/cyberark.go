package source

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// cyberRec is one Vault audit record, read from either the JSON the Vault's
// XSL translator writes (the fields of its <audit_record>) or the CEF line
// of the shipped Arcsight translator.
type cyberRec struct {
	iso, ts                             string // IsoTimestamp; the syslog header's time
	code, desc, action                  string
	issuer, safe, file, station, dhost  string
	duser, affected, sessionID, app     string
	reason, requestID, ticketID, vendor string
	product, version, hostname, srcHost string
}

// CyberArk maps one Vault/PSM audit line (docs/sources.md#cyberark): a
// syslog line (RFC 5424 or BSD header) whose message is CEF or JSON, or
// the JSON or CEF alone.
func CyberArk(rec []byte, system string) ([]*pb.Event, error) {
	hdrTime, payload := splitSyslog(rec)
	var c cyberRec
	switch {
	case bytes.HasPrefix(payload, []byte("CEF:")):
		if err := c.fromCEF(string(payload)); err != nil {
			return nil, err
		}
	case len(payload) > 0 && payload[0] == '{':
		if err := c.fromJSON(payload); err != nil {
			return nil, err
		}
	default:
		return nil, &FieldError{"", "not a CyberArk audit record: want a CEF:0|Cyber-Ark|... line or a JSON audit_record, after an optional syslog header"}
	}
	if err := required("MessageID", c.code); err != nil {
		return nil, err
	}
	var t time.Time
	var err error
	switch {
	case c.iso != "":
		t, err = parseTime("IsoTimestamp", c.iso, true)
	case hdrTime != "":
		t, err = parseTime("syslog timestamp", hdrTime, true)
	default:
		err = &FieldError{"IsoTimestamp", "required: the record has no time with a year (a BSD syslog header has none); set Rfc5424=yes in the Vault's DBParm.ini or use the JSON translator"}
	}
	if err != nil {
		return nil, err
	}
	r := &record{system: system, product: first(strings.ToLower(c.product), "vault"),
		rawType: c.code, rawID: digest(t.Format(time.RFC3339Nano), string(payload))}
	if c.hostname != "" {
		r.tenant = c.hostname
	}
	act := strings.ToLower(first(c.action, c.desc))
	account := strings.TrimPrefix(c.file, `Root\`)
	accountID := ""
	if c.safe != "" && account != "" {
		accountID = c.safe + "/" + account
	}
	var ev *pb.Event
	needAccount := func() error {
		if accountID == "" {
			return &FieldError{"Safe/File", "required to name the account"}
		}
		return nil
	}
	switch {
	case c.code == "295" || c.code == "319" || c.code == "428":
		// A retrieval is a checkout of the account's credential; it goes in
		// the account's chain, where the CPM's rotation of it also goes.
		if err := needAccount(); err != nil {
			return nil, err
		}
		if err := required("Issuer", c.issuer); err != nil {
			return nil, err
		}
		ev = r.event("", "credential.checked_out", t)
		ev.Subject = identity("cyberark:"+accountID, "", c.accountDisplay(account))
		kind := "human"
		if c.code == "319" {
			kind = "workload" // an application through the Credential Provider
		}
		ev.Actor = identity(c.issuer, kind, "")
		ev.Entitlement = entitlement("cyberark:"+accountID, account, true)
		ev.Refs = &pb.Refs{Credential: idOf(accountID)}
	case c.code == "24" || c.code == "31":
		if err := needAccount(); err != nil {
			return nil, err
		}
		ev = r.event("", "credential.rotated", t)
		ev.Subject = identity("cyberark:"+accountID, "", c.accountDisplay(account))
		ev.Actor = identity(first(c.issuer, "PasswordManager"), "system", "")
		ev.Entitlement = entitlement("cyberark:"+accountID, account, true)
		ev.Refs = &pb.Refs{Credential: idOf(accountID)}
	case c.code == "300" || c.code == "302":
		user := first(c.issuer, c.srcHost)
		if err := required("Issuer", user); err != nil {
			return nil, err
		}
		sid := c.sessionID
		if err := required("SessionID", sid); err != nil {
			return nil, err
		}
		typ := "session.started"
		if c.code == "302" {
			typ = "session.ended"
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(c.issuer, "human", "")
		if accountID != "" {
			ev.Entitlement = entitlement("cyberark:"+accountID, account, true)
		}
		ev.Refs = &pb.Refs{Session: idOf(sid), Credential: idOf(accountID)}
	case strings.Contains(act, "request") && (strings.Contains(act, "confirm") || strings.Contains(act, "reject")):
		// Dual control: the issuer approves or rejects another user's request.
		if err := required("TargetUser", c.affected); err != nil {
			return nil, err
		}
		if err := required("RequestId", c.requestID); err != nil {
			return nil, err
		}
		typ := "access.approved"
		if strings.Contains(act, "reject") {
			typ = "access.denied"
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(c.affected, "human", "")
		ev.Actor = identity(c.issuer, "human", "")
		if accountID != "" {
			ev.Entitlement = entitlement("cyberark:"+accountID, account, true)
		}
		ev.Refs = &pb.Refs{}
	default:
		return nil, nil
	}
	if c.requestID != "" {
		ev.Refs.Request = idOf(c.requestID)
	}
	ev.Refs.Ticket = idOf(c.ticketID)
	if ev.Type != "credential.rotated" {
		ev.Reason = cut(c.reason, maxReason)
	} else {
		setAttr(ev, "cyberark.reason", c.reason)
	}
	setAttr(ev, "cyberark.message_id", c.code)
	setAttr(ev, "cyberark.action", first(c.action, c.desc))
	setAttr(ev, "cyberark.safe", c.safe)
	setAttr(ev, "cyberark.file", c.file)
	setAttr(ev, "cyberark.station", c.station)
	setAttr(ev, "cyberark.target_host", c.dhost)
	setAttr(ev, "cyberark.target_user", c.duser)
	setAttr(ev, "cyberark.protocol", c.app)
	setAttr(ev, "cyberark.vault_version", c.version)
	return []*pb.Event{ev}, nil
}

// splitSyslog returns the RFC 5424 header time (empty for a BSD header or
// none) and the message after the header.
func splitSyslog(line []byte) (string, []byte) {
	line = bytes.TrimSpace(line)
	if i := bytes.Index(line, []byte("CEF:")); i >= 0 && (i == 0 || line[i-1] == ' ') {
		return rfc5424Time(line[:i]), line[i:]
	}
	if len(line) > 0 && line[0] == '{' {
		return "", line
	}
	if i := bytes.IndexByte(line, '{'); i >= 0 {
		return rfc5424Time(line[:i]), line[i:]
	}
	return "", line
}

// rfc5424Time returns TIMESTAMP of "<PRI>1 TIMESTAMP HOST ...", or "".
func rfc5424Time(hdr []byte) string {
	f := strings.Fields(string(hdr))
	if len(f) >= 2 && strings.HasPrefix(f[0], "<") && strings.HasSuffix(f[0], ">1") && f[1] != "-" {
		return f[1]
	}
	return ""
}

func (c *cyberRec) fromJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return &FieldError{"", "not JSON: " + err.Error()}
	}
	// The translators nest the record as {"syslog": {"audit_record": {...}}}.
	for _, k := range []string{"syslog", "audit_record"} {
		if sub, ok := m[k].(map[string]any); ok {
			m = sub
		}
	}
	s := func(k string) string {
		switch v := m[k].(type) {
		case string:
			return strings.TrimSpace(v)
		case float64:
			b, _ := json.Marshal(v)
			return string(b)
		}
		return ""
	}
	c.iso, c.code, c.desc, c.action = s("IsoTimestamp"), s("MessageID"), s("Desc"), s("Action")
	c.issuer, c.safe, c.file, c.station = s("Issuer"), s("Safe"), s("File"), s("Station")
	c.duser, c.affected, c.reason, c.requestID = s("TargetUser"), first(s("TargetUser"), s("SourceUser")), s("Reason"), s("RequestId")
	c.vendor, c.product, c.version, c.hostname = s("Vendor"), s("Product"), s("Version"), s("Hostname")
	c.ticketID = s("TicketId")
	for _, kv := range strings.Split(s("ExtraDetails"), ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "SessionID":
			c.sessionID = strings.TrimSpace(v)
		case "DstHost":
			c.dhost = strings.TrimSpace(v)
		case "Protocol":
			c.app = strings.TrimSpace(v)
		case "SrcHost":
			c.srcHost = strings.TrimSpace(v)
		case "User":
			c.duser = first(c.duser, strings.TrimSpace(v))
		}
	}
	if props, ok := m["CAProperties"].(map[string]any); ok {
		if list, ok := props["CAProperty"].([]any); ok {
			for _, p := range list {
				pm, _ := p.(map[string]any)
				name, _ := pm["Name"].(string)
				val, _ := pm["Value"].(string)
				switch name {
				case "Address":
					c.dhost = first(c.dhost, val)
				case "UserName":
					c.duser = first(c.duser, val)
				}
			}
		}
	}
	return nil
}

func (c *cyberRec) fromCEF(line string) error {
	hdr, ext, err := splitCEF(line)
	if err != nil {
		return err
	}
	c.vendor, c.product, c.version, c.code, c.desc = hdr[1], hdr[2], hdr[3], hdr[4], hdr[5]
	kv := cefExtension(ext)
	c.action, c.issuer, c.file, c.station = kv["act"], kv["suser"], kv["fname"], kv["shost"]
	c.dhost, c.duser, c.sessionID, c.app = kv["dhost"], kv["duser"], kv["externalId"], kv["app"]
	c.reason = kv["reason"]
	// csN and cnN carry what their labels say.
	for _, n := range []string{"cs1", "cs2", "cs3", "cs4", "cs5", "cn1", "cn2", "cn3"} {
		v := kv[n]
		switch kv[n+"Label"] {
		case "Affected User Name":
			c.affected = v
		case "Safe Name":
			c.safe = v
		case "Request Id":
			c.requestID = v
		case "Ticket Id":
			c.ticketID = v
		}
	}
	return nil
}

// splitCEF returns the seven header fields (CEF:0 first) and the extension.
func splitCEF(line string) ([]string, string, error) {
	var hdr []string
	var cur strings.Builder
	for i := 0; i < len(line); i++ {
		switch ch := line[i]; {
		case ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '|':
			hdr = append(hdr, cur.String())
			cur.Reset()
			if len(hdr) == 7 {
				return hdr, line[i+1:], nil
			}
		default:
			cur.WriteByte(ch)
		}
	}
	return nil, "", &FieldError{"CEF header", "want CEF:0|Vendor|Product|Version|MessageID|Desc|Severity|extension"}
}

// cefExtension parses "k=v k2=v two words" (values run to the next key;
// \= \\ \n escapes; CyberArk's translator also wraps values in quotes).
func cefExtension(ext string) map[string]string {
	kv := map[string]string{}
	type mark struct{ keyAt, valAt int }
	var marks []mark
	for i := 0; i < len(ext); i++ {
		if ext[i] != '=' || (i > 0 && ext[i-1] == '\\') {
			continue
		}
		j := i
		for j > 0 && isKeyByte(ext[j-1]) {
			j--
		}
		if j == i || (j > 0 && ext[j-1] != ' ') {
			continue
		}
		marks = append(marks, mark{j, i + 1})
	}
	for n, m := range marks {
		end := len(ext)
		if n+1 < len(marks) {
			end = marks[n+1].keyAt
		}
		key := ext[m.keyAt : m.valAt-1]
		v := strings.TrimSpace(ext[m.valAt:end])
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if strings.IndexByte(v, '\\') >= 0 {
			v = cefUnescape.Replace(v)
		}
		kv[key] = v
	}
	return kv
}

var cefUnescape = strings.NewReplacer(`\=`, "=", `\\`, `\`, `\n`, "\n", `\r`, "\r")

func isKeyByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
}

// accountDisplay names the privileged account for people: user@host when
// the record says both.
func (c *cyberRec) accountDisplay(account string) string {
	if c.duser != "" && c.dhost != "" {
		return c.duser + "@" + c.dhost
	}
	return account
}
