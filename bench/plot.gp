# carpool benchmark plot. usage: gnuplot -e "dir='PLOTDIR'; outfile='bench/results.png'" bench/plot.gp
# Data files (written by bench/summarize.awk): DIR/<regime>-<proxy>.dat with columns
#   concurrency  cpu_med cpu_min cpu_max  added_ttft_p50_med added_min added_max
set terminal pngcairo size 1700,560 font "sans,11"
set output outfile
set datafile missing "-"
set logscale x 2
set xrange [40:1600]
set xtics ("64" 64, "256" 256, "1024" 1024)
set grid ytics lc rgb "#dddddd"
set key outside right top vertical box
set multiplot layout 1,2 title "carpool vs nginx in front of carpool-sim (a simulator): medians, bars = min–max"

set title "CPU per streamed token of the proxy process"
set xlabel "concurrent streams"
set ylabel "CPU µs per token"
set yrange [0:*]
plot dir."/paced-nginx.dat"   u 1:2:3:4 w yerrorlines lw 2 pt 7 lc rgb "#1f77b4" t "nginx, paced (20 ms/step)", \
     dir."/paced-carpool.dat" u 1:2:3:4 w yerrorlines lw 2 pt 5 lc rgb "#d62728" t "carpool, paced", \
     dir."/flood-nginx.dat"   u 1:2:3:4 w yerrorlines lw 2 pt 6 dt 2 lc rgb "#1f77b4" t "nginx, flood", \
     dir."/flood-carpool.dat" u 1:2:3:4 w yerrorlines lw 2 pt 4 dt 2 lc rgb "#d62728" t "carpool, flood"

set title "Time to first token added over direct (p50)"
set ylabel "added TTFT p50, ms"
set autoscale y
plot dir."/paced-nginx.dat"   u 1:5:6:7 w yerrorlines lw 2 pt 7 lc rgb "#1f77b4" t "nginx, paced", \
     dir."/paced-carpool.dat" u 1:5:6:7 w yerrorlines lw 2 pt 5 lc rgb "#d62728" t "carpool, paced", \
     dir."/flood-nginx.dat"   u 1:5:6:7 w yerrorlines lw 2 pt 6 dt 2 lc rgb "#1f77b4" t "nginx, flood", \
     dir."/flood-carpool.dat" u 1:5:6:7 w yerrorlines lw 2 pt 4 dt 2 lc rgb "#d62728" t "carpool, flood"
unset multiplot
