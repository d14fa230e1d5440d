# A shell pipeline over the CSV: rows per month and the hottest day.
csv=/work/airquality.csv
echo "rows $(tail -n +2 "$csv" | wc -l)"
tail -n +2 "$csv" | cut -d, -f5 | sort -n | uniq -c | awk '{ print "rows.month_" $2, $1 }'
tail -n +2 "$csv" | sort -t, -k4,4nr | head -n 1 | awk -F, '{ print "max_temp", $4; print "max_temp.month", $5; print "max_temp.day", $6 }'
