# delta.awk BEFORE AFTER: the lines of metrics.awk whose count grew, as
# "KIND KEY... DELTA" (a counter missing before counts from 0).
NR == FNR { before[$1 " " $2 " " ($1 == "req" ? $3 : "")] = $NF; next }
{
	k = $1 " " $2 " " ($1 == "req" ? $3 : "")
	d = $NF - before[k]
	if (d > 0) { $NF = d; print }
}
