package synth

import (
	"fmt"
	"strings"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

type dept struct {
	name     string
	weight   int
	privProb float64
	jit      []*pb.Entitlement // eligible just-in-time roles (PAM)
	standing []*pb.Entitlement // standing privileged roles (IGA)
	sod      [2]*pb.Entitlement
	titles   []string
}

func ent(id, resource string, priv bool) *pb.Entitlement {
	return &pb.Entitlement{Id: id, Resource: resource, Privileged: priv}
}

var (
	sodAP     = [2]*pb.Entitlement{ent("sap:ap-invoice-create", "SAP S/4HANA FI", false), ent("sap:ap-payment-release", "SAP S/4HANA FI", false)}
	sodDeploy = [2]*pb.Entitlement{ent("github:prod-deploy", "github.com/acme-corp", false), ent("github:release-approve", "github.com/acme-corp", false)}
	sodPairs  = [][2]string{{sodAP[0].Id, sodAP[1].Id}, {sodDeploy[0].Id, sodDeploy[1].Id}}
)

var depts = []*dept{
	{name: "engineering", weight: 30, privProb: 0.5,
		jit:      []*pb.Entitlement{ent("aws:prod-admin", "aws:account/4471-prod", true), ent("k8s:prod-cluster-admin", "k8s:cluster/prod-eu1", true)},
		standing: []*pb.Entitlement{ent("github:org-owner", "github.com/acme-corp", true)},
		sod:      sodDeploy, titles: []string{"Software Engineer", "Senior Software Engineer", "Site Reliability Engineer", "Staff Engineer"}},
	{name: "it-operations", weight: 10, privProb: 0.9,
		jit:      []*pb.Entitlement{ent("ad:domain-admins", "ad:corp.acme.example", true), ent("vsphere:administrator", "vcenter:dc1", true)},
		standing: []*pb.Entitlement{ent("okta:super-admin", "okta:acme-corp", true), ent("ad:server-operators", "ad:corp.acme.example", true)},
		titles:   []string{"Systems Administrator", "Network Engineer", "IT Operations Engineer"}},
	{name: "security", weight: 6, privProb: 0.9,
		jit:      []*pb.Entitlement{ent("siem:admin", "splunk:acme-soc", true), ent("aws:security-audit-admin", "aws:org/acme", true)},
		standing: []*pb.Entitlement{ent("crowdstrike:falcon-admin", "crowdstrike:acme", true)},
		titles:   []string{"Security Analyst", "Security Engineer", "Incident Responder"}},
	{name: "data", weight: 8, privProb: 0.6,
		jit:      []*pb.Entitlement{ent("oracle:dba", "oracle:erp-prod", true), ent("snowflake:accountadmin", "snowflake:acme", true)},
		standing: []*pb.Entitlement{ent("snowflake:sysadmin", "snowflake:acme", true)},
		titles:   []string{"Data Engineer", "Database Administrator", "Analytics Engineer"}},
	{name: "finance", weight: 10, privProb: 0.15,
		jit:      []*pb.Entitlement{ent("sap:fi-firefighter", "SAP S/4HANA FI", true)},
		standing: []*pb.Entitlement{ent("sap:basis-admin", "SAP S/4HANA", true)},
		sod:      sodAP, titles: []string{"Accountant", "Accounts Payable Specialist", "Financial Analyst"}},
	{name: "sales", weight: 18, privProb: 0.03,
		jit:      []*pb.Entitlement{ent("salesforce:system-admin", "salesforce:acme", true)},
		standing: []*pb.Entitlement{ent("salesforce:modify-all-data", "salesforce:acme", true)},
		titles:   []string{"Account Executive", "Sales Engineer", "Sales Operations Analyst"}},
	{name: "people", weight: 6, privProb: 0.1,
		jit:      []*pb.Entitlement{ent("workday:security-admin", "workday:acme", true)},
		standing: []*pb.Entitlement{ent("workday:hr-partner-all", "workday:acme", true)},
		titles:   []string{"HR Business Partner", "Recruiter", "People Operations Specialist"}},
	{name: "support", weight: 12, privProb: 0.1,
		jit:      []*pb.Entitlement{ent("okta:helpdesk-admin", "okta:acme-corp", true)},
		standing: []*pb.Entitlement{ent("zendesk:admin", "zendesk:acme", true)},
		titles:   []string{"Support Engineer", "Customer Support Specialist", "Support Lead"}},
}

func deptByName(n string) *dept {
	for _, d := range depts {
		if d.name == n {
			return d
		}
	}
	return nil
}

var firstNames = strings.Fields(`amelia liam olivia noah emma oliver ava elijah sophia james isabella
william mia benjamin charlotte lucas amara henry harper theo evelyn jack priya mateo aisha leo
chloe ravi zoe omar nina hugo ines kenji mei sven freya diego lucia tomas ana yusuf`)

var lastNames = strings.Fields(`ross martin chen garcia novak patel okafor schmidt rossi kowalski
silva tanaka murphy dubois jensen larsen nguyen kim haddad moreau fischer ivanova costa lindqvist
brennan moreno sato ferreira walsh horvat mendes berg kaur adeyemi nakamura romero weber mueller`)

const (
	lifeStayer = iota
	lifeMover
	lifeLeaver
	lifeLeave // leave of absence: disabled, then enabled
)

type human struct {
	ident    *pb.Identity
	dept     *dept
	manager  *human
	head     bool
	created  time.Time
	joiner   bool
	priv     bool
	life     int
	moveAt   time.Time
	newDept  *dept
	newMgr   *human
	leaveAt  time.Time
	disFrom  time.Time
	disTo    time.Time
	plant    string
	grants   []*grant
	location string
	title    string
}

func (h *human) id() string { return h.ident.Id }

// deptAt is the department at t.
func (h *human) deptAt(t time.Time) *dept {
	if h.life == lifeMover && !t.Before(h.moveAt) {
		return h.newDept
	}
	return h.dept
}

func (h *human) managerAt(t time.Time) *human {
	if h.life == lifeMover && !t.Before(h.moveAt) {
		return h.newMgr
	}
	return h.manager
}

// active reports whether the whole of [t, t+d] is ordinary working time:
// after joining, before leaving, away from a move and a leave of absence.
func (h *human) active(g *gen, t time.Time, d time.Duration) bool {
	end := t.Add(d)
	if t.Before(h.created.Add(2*day)) || !end.Before(g.asOf.Add(-time.Hour)) {
		return false
	}
	overlaps := func(a, b time.Time) bool { return t.Before(b) && end.After(a) }
	switch h.life {
	case lifeLeaver:
		return end.Before(h.leaveAt.Add(-day))
	case lifeMover:
		return !overlaps(h.moveAt.Add(-day), h.moveAt.Add(3*day))
	case lifeLeave:
		return !overlaps(h.disFrom.Add(-day), h.disTo.Add(day))
	}
	return true
}

// nhi is a service account, workload or bot, or a vaulted shared account.
type nhi struct {
	idn     string
	kind    string
	display string
	app     string
	created time.Time
	owners  []ownerSpan
	decomAt time.Time
	plant   string
	grants  []*grant
}

type ownerSpan struct {
	owner *human
	from  time.Time
}

func (n *nhi) identityAt(t time.Time) *pb.Identity {
	o := n.owners[0].owner
	for _, s := range n.owners {
		if !t.Before(s.from) {
			o = s.owner
		}
	}
	return &pb.Identity{Id: n.idn, Kind: n.kind, Display: n.display, OwnerId: o.id()}
}

// people creates the population and its lifecycle (joiners, movers,
// leavers, leaves of absence); events come later.
func (g *gen) people() {
	nHumans := g.cfg.Identities * 7 / 10
	nVault := max(2, g.cfg.Identities/12)
	nNHI := g.cfg.Identities - nHumans - nVault
	g.names = map[string]bool{}
	g.heads = map[string]*human{}
	g.ceo = g.newHuman(&dept{name: "executive"}, nil, "Chief Executive Officer")
	g.ceo.head = true
	for _, d := range depts {
		h := g.newHuman(d, g.ceo, "Head of "+strings.ToUpper(d.name[:1])+d.name[1:])
		h.head = true
		g.heads[d.name] = h
	}
	total := 0
	for _, d := range depts {
		total += d.weight
	}
	for len(g.humans) < nHumans {
		w := g.r.IntN(total)
		var d *dept
		for _, x := range depts {
			if w < x.weight {
				d = x
				break
			}
			w -= x.weight
		}
		h := g.newHuman(d, g.heads[d.name], pick(g, d.titles))
		h.priv = g.chance(d.privProb)
		if g.chance(0.1) {
			h.joiner = true
			h.created = g.at(g.start.Add(10*day), g.asOf.Add(-80*day))
		}
		switch x := g.r.Float64(); {
		case x < 0.08:
			h.life = lifeMover
			h.moveAt = g.at(h.created.Add(30*day), g.asOf.Add(-45*day))
			for h.newDept == nil || h.newDept == h.dept {
				h.newDept = pick(g, depts)
			}
			h.newMgr = g.heads[h.newDept.name]
		case x < 0.16:
			h.life = lifeLeaver
			h.leaveAt = g.at(h.created.Add(30*day), g.asOf.Add(-6*day))
		case x < 0.19:
			h.life = lifeLeave
			h.disFrom = g.at(h.created.Add(20*day), g.asOf.Add(-40*day))
			h.disTo = h.disFrom.Add(g.dur(5*day, 20*day))
		}
	}
	stayers := g.filter(func(h *human) bool { return h.life == lifeStayer })
	apps := strings.Fields("billing ledger checkout search payroll crm etl backup monitoring ci-runner reports inventory")
	kinds := []string{"service_account", "service_account", "workload", "workload", "bot"}
	for i := range nNHI {
		k := pick(g, kinds)
		app := pick(g, apps)
		prefix := map[string]string{"service_account": "svc", "workload": "wl", "bot": "bot"}[k]
		n := &nhi{idn: fmt.Sprintf("%s-%s-%03d", prefix, app, i+1), kind: k, app: app,
			display: fmt.Sprintf("%s %s", app, strings.ReplaceAll(k, "_", " ")), created: g.at(g.start, g.start.Add(2*day))}
		owner := pick(g, g.humans[1:])
		if g.chance(0.15) {
			n.created = g.at(g.start.Add(15*day), g.asOf.Add(-30*day))
			owner = pick(g, stayers)
		}
		n.owners = []ownerSpan{{owner, n.created}}
		g.nhis = append(g.nhis, n)
	}
	admins := g.filter(func(h *human) bool {
		return h.life == lifeStayer && (h.dept.name == "it-operations" || h.dept.name == "data")
	})
	if len(admins) == 0 {
		admins = stayers
	}
	systems := strings.Fields("oracle-erp-sys sqlserver-sa linux-root-web esxi-root cisco-enable domain-break-glass sap-ddic postgres-superuser")
	for i := range nVault {
		s := systems[i%len(systems)]
		n := &nhi{idn: fmt.Sprintf("vault-%s-%02d", s, i+1), kind: "service_account",
			display: "vaulted " + s, app: s, created: g.at(g.start, g.start.Add(day))}
		n.owners = []ownerSpan{{pick(g, admins), n.created}}
		g.vaulted = append(g.vaulted, n)
	}
}

func (g *gen) newHuman(d *dept, mgr *human, title string) *human {
	var id string
	for {
		id = pick(g, firstNames) + "." + pick(g, lastNames)
		if !g.names[id] {
			break
		}
		id += fmt.Sprintf("%d", 2+g.r.IntN(98))
		if !g.names[id] {
			break
		}
	}
	g.names[id] = true
	first, last, _ := strings.Cut(strings.TrimRight(id, "0123456789"), ".")
	display := strings.ToUpper(first[:1]) + first[1:] + " " + strings.ToUpper(last[:1]) + last[1:]
	h := &human{ident: &pb.Identity{Id: id, Kind: "human", Display: display}, dept: d, manager: mgr,
		created: g.at(g.start, g.start.Add(6*time.Hour)), location: pick(g, []string{"London", "Berlin", "Austin", "Singapore", "Toronto"})}
	h.title = title
	g.humans = append(g.humans, h)
	return h
}

func (g *gen) filter(f func(*human) bool) []*human {
	var out []*human
	for _, h := range g.humans {
		if !h.head && h != g.ceo && h.plant == "" && f(h) {
			out = append(out, h)
		}
	}
	return out
}

// plan decides which subjects carry which failure. Each subject carries at
// most one, so that the findings of one plant never depend on another.
func (g *gen) plan() {
	take := func(rule string, weight float64, pool []*human) {
		g.r.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
		for _, h := range pool[:g.planCount(weight, len(pool))] {
			h.plant = rule
		}
	}
	privStay := func() []*human {
		return g.filter(func(h *human) bool { return h.priv && h.life == lifeStayer && !h.joiner })
	}
	// Ordered from the narrowest pool to the widest.
	take(rBreakglass, 0.6, g.filter(func(h *human) bool {
		return h.priv && h.life == lifeStayer && !h.joiner && (h.dept.name == "it-operations" || h.dept.name == "security")
	}))
	take(rActivityAfterOff, 0.6, g.filter(func(h *human) bool { return h.life == lifeLeaver }))
	take(rLeaverRetained, 1.5, g.filter(func(h *human) bool { return h.life == lifeLeaver }))
	take(rMoverRetained, 2, g.filter(func(h *human) bool { return h.life == lifeMover }))
	take(rSoD, 0.4, g.filter(func(h *human) bool {
		return h.life == lifeStayer && (h.dept.name == "finance" || h.dept.name == "engineering")
	}))
	for _, r := range []struct {
		rule   string
		weight float64
	}{{rSelfApproval, 0.3}, {rApprovalAfterExpiry, 0.5}, {rSessionNoApproval, 0.6}, {rNoMFA, 0.8},
		{rJITOutlived, 1.5}, {rApprovalNoRevocation, 1}, {rStanding, 1.5}, {rReviewOverdue, 1.2},
		{rReviewNotEnforced, 0.8}, {rDormant, 1.2}} {
		take(r.rule, r.weight, privStay())
	}
	take(rOverstayed, 0.5, g.filter(func(h *human) bool { return h.life == lifeStayer && !h.joiner }))

	freeNHI := func() []*nhi {
		var out []*nhi
		for _, n := range g.nhis {
			if n.plant == "" && n.created.Before(g.start.Add(3*day)) && n.owners[0].owner.life != lifeLeaver {
				out = append(out, n)
			}
		}
		return out
	}
	takeN := func(rule string, weight float64, pool []*nhi) []*nhi {
		g.r.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
		pool = pool[:g.planCount(weight, len(pool))]
		for _, n := range pool {
			n.plant = rule
		}
		return pool
	}
	takeN(rRotationOverdue, 1.5, freeNHI())
	leavers := g.filter(func(h *human) bool { return h.life == lifeLeaver })
	for _, h := range g.humans {
		if h.life == lifeLeaver && h.plant != "" {
			leavers = append(leavers, h)
		}
	}
	if len(leavers) > 0 {
		for _, n := range takeN(rOrphanedNHI, 1.5, freeNHI()) {
			n.owners = []ownerSpan{{pick(g, leavers), n.created}}
		}
	}
	var vs []*nhi
	vs = append(vs, g.vaulted...)
	takeN(rCheckoutNotRotated, 1, vs)
}
