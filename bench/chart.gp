# gnuplot script of bench/run.sh: run in bench/out, SVG on stdout.
#   gnuplot -e 'subtitle="..."' bench/chart.gp > chart.svg
# Left: CPU µs per request at 64 connections per proxy (chart-cpu.tsv);
# right: added p50 latency over direct at 1 connection (chart-lat.tsv).
if (!exists("subtitle")) subtitle = ""
set terminal svg size 960,420 dynamic enhanced font "sans,12" background rgb "white"
set encoding utf8
set multiplot layout 1,2 title "modelgate vs nginx proxy\\_pass (loopback, lower is better)".subtitle
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.7
set grid ytics lc rgb "#dddddd"
set yrange [0:*]
set xtics rotate by -20 scale 0 font ",10"
unset key
set ylabel "CPU µs per request"
set title "CPU per request, 64 connections"
plot "chart-cpu.tsv" using 2:xtic(1) lc rgb "#4a7ebb", \
     "" using 0:2:(sprintf("%.1f", $2)) with labels offset 0,0.7 notitle
set ylabel "µs added over direct (p50)"
set title "Added p50 latency, 1 connection"
plot "chart-lat.tsv" using 2:xtic(1) lc rgb "#d9822b", \
     "" using 0:2:(sprintf("%.1f", $2)) with labels offset 0,0.7 notitle
unset multiplot
