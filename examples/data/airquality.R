# Writes R's built-in airquality data set (New York, May to September 1973) as CSV, with
# missing values as empty fields. Its output is committed as examples/data/airquality.csv;
# regenerate with:
#   corral run --lang r examples/data/airquality.R > examples/data/airquality.csv
write.csv(airquality, row.names = FALSE, na = "", quote = FALSE)
