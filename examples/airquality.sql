-- A SQLite database built from the CSV, then questions over it.
CREATE TABLE airquality (Ozone INTEGER, SolarR INTEGER, Wind REAL, Temp INTEGER, Month INTEGER, Day INTEGER);
.import --csv --skip 1 /work/airquality.csv airquality
-- The CSV writes missing values as empty fields: make them NULL, not empty text.
UPDATE airquality SET Ozone = NULL WHERE Ozone = '';
UPDATE airquality SET SolarR = NULL WHERE SolarR = '';
.mode list
.separator " "
SELECT 'rows', count(*) FROM airquality;
SELECT 'ozone_missing', count(*) FROM airquality WHERE Ozone IS NULL;
SELECT 'days_ozone_over_100', count(*) FROM airquality WHERE Ozone > 100;
SELECT 'max_ozone', max(Ozone) FROM airquality;
SELECT 'hottest_month', Month FROM airquality GROUP BY Month ORDER BY avg(Temp) DESC LIMIT 1;
SELECT 'mean_temp.month_' || Month, printf('%.4f', avg(Temp)) FROM airquality GROUP BY Month ORDER BY Month;
