# Reduces kube-apiserver's /metrics (Prometheus text) to the counters the
# benchmark compares before and after a window:
#   req VERB RESOURCE[/SUBRESOURCE] COUNT   apiserver_request_total, write verbs
#                                           only, summed over code, version, scope
#   fs FLOWSCHEMA COUNT                     apiserver_flowcontrol_dispatched_requests_total
#                                           of the benchmark's FlowSchemas (bench-ctl-*)
# RESOURCE carries its API group only where the name alone is ambiguous
# (events.events.k8s.io).
function label(line, name,    re, s) {
	re = "[{,]" name "=\"[^\"]*\""
	if (!match(line, re)) return ""
	s = substr(line, RSTART, RLENGTH)
	sub("^[{,]" name "=\"", "", s)
	sub("\"$", "", s)
	return s
}
/^apiserver_request_total\{/ {
	verb = label($0, "verb")
	if (verb !~ /^(POST|PUT|PATCH|DELETE|DELETECOLLECTION|APPLY)$/) next
	res = label($0, "resource")
	if (label($0, "group") == "events.k8s.io") res = res ".events.k8s.io"
	sub_ = label($0, "subresource")
	if (sub_ != "") res = res "/" sub_
	req[verb " " res] += $NF
	next
}
/^apiserver_flowcontrol_dispatched_requests_total\{/ {
	fs_ = label($0, "flow_schema")
	if (fs_ ~ /^bench-ctl-/) flow[fs_] += $NF
	next
}
END {
	for (k in req) printf "req %s %d\n", k, req[k]
	for (k in flow) printf "fs %s %d\n", k, flow[k]
}
